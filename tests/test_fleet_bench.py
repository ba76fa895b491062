"""The fleet benchmark runs end to end at a small scale (its figures are read by people, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fleet_bench import build_fleet, lower_bound, main


def test_the_fleet_has_the_documented_shape():
    fleet = build_fleet(200)
    references = [(r["vault"], r["name"]) for n in fleet["namespaces"] for r in n["keys"]]
    assert len(fleet["namespaces"]) == 200 and len(references) == 600
    assert len(set(references)) == 101  # half as many keys as namespaces, and the shared one
    assert sum(1 for n in fleet["namespaces"] if any(r["name"] == "sb-shared" for r in n["keys"])) == 20


def test_the_tight_bound_is_the_longer_of_throughput_and_the_chain_then_the_cpu_floor():
    # 10,000 namespaces, 20 vaults of 250 keys: 10 listing pages each, 200 requests; 10 inventory pages.
    bound = lower_bound(10_000, [250] * 20, 0.5, 0.02, cpu_floor_s=1.0)
    assert bound["steady_requests"] == 200 and bound["steady_round_trips"] == 1 + 10 + 1 + 10
    assert bound["steady_s"] == pytest.approx(22 * 0.02 + 1.0)  # the chain beats 10 pages at 200/s
    assert bound["first_requests"] == 5_000
    assert bound["first_s"] == pytest.approx(250 / 200 + 1.0)  # the busiest vault's 250 reads at 200/s
    # 100,000 namespaces: 100 inventory pages, 15 per 5 s window: 6 windows waited before the last pages.
    assert lower_bound(100_000, [2500] * 20, 0.5, 0.02)["inventory_s"] == pytest.approx(6 * 5.0 + 0.02)


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
    # Another instance's first poll, with only the store to go on, confirms keys from the listings too.
    assert on_tables["fresh"]["statuses"] == {"healthy": 120}
    # (a fresh process also meets each vault's authentication challenge once: at most one request a vault more)
    assert on_tables["fresh"]["stand_in"]["keyvault"] <= on_tables["steady"]["stand_in"]["keyvault"] + 20
    assert on_tables["fresh"]["stand_in"]["keyvault"] < largest["distinct_keys"]
    assert largest["competent"]["keys_read"] == largest["distinct_keys"] and largest["competent"]["usable"] > 0
    assert largest["lower_bound"]["cpu_floor_s"] > 0
    assert "marginal cost" in capsys.readouterr().out
