"""The fleet benchmark runs end to end at a small scale (its figures are read by people, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.fleet_bench import build_fleet, lower_bound, main


def test_the_fleet_has_the_documented_shape():
    fleet = build_fleet(200)
    references = [(r["vault"], r["name"]) for n in fleet["namespaces"] for r in n["keys"]]
    assert len(fleet["namespaces"]) == 200 and len(references) == 600
    assert len(set(references)) == 101  # half as many keys as namespaces, and the shared one
    assert sum(1 for n in fleet["namespaces"] if any(r["name"] == "sb-shared" for r in n["keys"])) == 20


def test_the_lower_bound_is_the_longer_of_throughput_and_the_chain():
    assert lower_bound(250, 0.5, 0.02)["bound_s"] == 1.25  # 250 reads at 200/s
    assert lower_bound(2, 0.5, 0.02)["bound_s"] == 0.1  # five round trips of 20 ms


def test_a_small_run_writes_every_figure(tmp_path: Path, capsys):
    out = tmp_path / "fleet-bench.json"
    assert main(["--scales", "60,120", "--latency", "0.005", "--naive-namespaces", "10", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    largest = figures["scales"][-1]
    steady, first = largest["ours"]["steady"], largest["ours"]["first"]
    assert steady["namespaces"] == 120 and steady["statuses"] == {"healthy": 120}
    # The same polls on Table Storage (the store infra/ deploys), in the Azurite the benchmark started.
    on_tables = largest["stores"]["tables"]
    assert on_tables["steady"]["statuses"] == {"healthy": 120} and on_tables["event"]["outcome"] == "evaluated"
    assert first["stand_in"]["throttled"] == steady["stand_in"]["throttled"] == 0
    # The steady poll confirms unchanged keys from the listing: fewer Key Vault requests than distinct keys.
    assert steady["stand_in"]["keyvault"] < largest["distinct_keys"] <= first["stand_in"]["keyvault"]
    assert largest["naive"]["references"] == 30 and largest["naive"]["extrapolated"]
    assert "marginal cost" in capsys.readouterr().out
