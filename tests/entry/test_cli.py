"""The `keyhealth` command line: formats, exit statuses, and clear refusals of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.domain.findings import Code
from tests.builders import VAULT, key, namespace, ref, run_cli, scenario, simulate, vault, version

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fleet.json"


def _healthy() -> dict[str, object]:
    return scenario(
        [namespace("sb", ref("k1"), ref("k2"))],
        [key("k1"), key("k2")],
    )


def test_exit_status_is_0_when_everything_is_healthy(tmp_path):
    """Two usable keys that never expire: healthy, no finding at warning or above, exit 0."""
    run = simulate(tmp_path, _healthy())
    assert run.status == 0
    assert run.namespace("sb")["findings"] == []


def test_exit_status_is_1_on_a_warning(tmp_path):
    """A revocation predicted 20 days out is a warning: exit 1."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-12-12T00:00:00Z"))])
    assert simulate(tmp_path, document).status == 1


def test_exit_status_is_3_when_critical_or_revoked(tmp_path):
    """A revocation predicted 5 days out is critical: exit 3."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-11-27T00:00:00Z"))])
    assert simulate(tmp_path, document).status == 3


def test_only_info_findings_still_exit_0(tmp_path):
    """A single healthy key (no-redundancy, info) does not fail the run."""
    run = simulate(tmp_path, scenario([namespace("sb", ref("k"))], [key("k")]))
    assert run.status == 0
    assert [f["severity"] for f in run.namespace("sb")["findings"]] == ["info"]


def test_thresholds_come_from_settings(tmp_path, monkeypatch):
    """KEYHEALTH_WARNING_DAYS and KEYHEALTH_CRITICAL_DAYS move the severities."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-12-12T00:00:00Z"))])
    monkeypatch.setenv("KEYHEALTH_CRITICAL_DAYS", "21")
    monkeypatch.setenv("KEYHEALTH_WARNING_DAYS", "60")
    assert simulate(tmp_path, document).status == 3
    monkeypatch.setenv("KEYHEALTH_CRITICAL_DAYS", "1")
    monkeypatch.setenv("KEYHEALTH_WARNING_DAYS", "10")
    run = simulate(tmp_path, document)
    assert run.status == 0
    assert {f["severity"] for f in run.namespace("sb")["findings"]} == {"info"}


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("KEYHEALTH_WARNING_DAYS", "soon", "KEYHEALTH_WARNING_DAYS='soon': expected a number of days"),
        ("KEYHEALTH_CRITICAL_DAYS", "-1", "KEYHEALTH_CRITICAL_DAYS='-1'"),
        ("KEYHEALTH_CRITICAL_DAYS", "45", "must not exceed KEYHEALTH_WARNING_DAYS"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(tmp_path, monkeypatch, variable, value, expected):
    """An unusable setting exits 2 with its name and value, without a traceback."""
    monkeypatch.setenv(variable, value)
    run = simulate(tmp_path, _healthy())
    assert run.status == 2
    assert expected in run.stderr
    assert "Traceback" not in run.stderr


def test_the_table_shows_one_row_a_namespace(tmp_path):
    """--format table prints a header, a row per namespace with status, usable keys and window, then details."""
    path = tmp_path / "s.json"
    document = scenario(
        [namespace("sb-ok", ref("k")), namespace("sb-soon", ref("k2"))],
        [key("k"), key("k2", version("v1", exp="2026-11-27T00:00:00Z"))],
    )
    path.write_text(json.dumps(document))
    run = run_cli("simulate", str(path), "--color", "never")
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("NAMESPACE"))
    assert "STATUS" in header and "USABLE" in header and "REVOCATION WINDOW" in header
    row = next(line for line in lines if line.startswith("sb-soon"))
    assert "healthy" in row and "1/1" in row and "2026-11-27T00:00:00Z .. 2026-11-27T00:05:00Z" in row
    assert "in 5 days" in row and "critical" in row
    assert "CRITICAL revocation-predicted [sb-soon]" in run.stdout
    assert "\033[" not in run.stdout


def test_colour_is_used_when_asked(tmp_path):
    """--color always paints statuses with ANSI colours."""
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_healthy()))
    assert "\033[32mhealthy" in run_cli("simulate", str(path), "--color", "always").stdout


def test_yaml_scenarios_are_read_too(tmp_path):
    """A .yaml file with the same structure gives the same answer; unquoted YAML timestamps work."""
    text = f"""
now: 2026-11-22T00:00:00Z
vaults:
  - uri: {VAULT}
    access: {{"00000000-0000-0000-0000-00000000aaaa": [get, wrapKey, unwrapKey]}}
keys:
  - vault: {VAULT}
    name: k
    versions:
      - {{version: v1, created: 2026-01-01T00:00:00Z, exp: 2026-12-01T00:00:00Z}}
namespaces:
  - id: /subscriptions/s/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/sb
    name: sb
    identity: {{principal_id: 00000000-0000-0000-0000-00000000aaaa}}
    keys: [{{vault: {VAULT}, name: k}}]
"""
    run = simulate(tmp_path, text, filename="fleet.yaml")
    assert run.namespace("sb")["revoked_by"] == "2026-12-01T00:05:00Z"


def _refused(tmp_path: Path, document: object, *extra: str, filename: str = "bad.json") -> str:
    run = simulate(tmp_path, document, *extra, filename=filename)
    assert run.status == 2, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    return run.stderr


@pytest.mark.parametrize(
    ("mutate", "path", "problem"),
    [
        (
            lambda d: d["changes"].append({"at": "2026-12-01T00:00:00Z", "op": "explode", "vault": VAULT}),
            "$.changes[0].op",
            "unknown op 'explode'",
        ),
        (lambda d: d.update(now="tomorrow"), "$.now", "not an ISO 8601 time"),
        (
            lambda d: d["keys"][0]["versions"][0].update(exp="2026-13-01T00:00:00Z"),
            "$.keys[0].versions[0].exp",
            "not an ISO 8601 time",
        ),
        (
            lambda d: d["keys"][0]["versions"][0].update(exp=1764547200),
            "$.keys[0].versions[0].exp",
            "got the number 1764547200",
        ),
        (
            lambda d: d["namespaces"][0]["keys"].append({"vault": "https://kv-nope.vault.azure.net", "name": "k"}),
            "$.namespaces[0].keys[1].vault",
            "unknown vault 'https://kv-nope.vault.azure.net'",
        ),
        (
            lambda d: d["keys"].append({"vault": "https://kv-nope.vault.azure.net", "name": "x", "versions": []}),
            "$.keys[1].vault",
            "unknown vault",
        ),
        (
            lambda d: d["namespaces"][0]["keys"].extend([ref("a"), ref("b"), ref("c")]),
            "$.namespaces[0].keys",
            "lists 4 keys; Service Bus allows at most 3",
        ),
        (
            lambda d: d["namespaces"].append(namespace("SB", ref("k"))),
            "$.namespaces[1].name",
            "duplicate namespace name 'SB'",
        ),
        (lambda d: d["vaults"].append(vault(VAULT.upper() + "/")), "$.vaults[1].uri", "duplicate vault"),
        (lambda d: d["keys"].append(key("K")), "$.keys[1].name", "duplicate key 'K'"),
        (
            lambda d: d["keys"][0]["versions"].append(version("V1")),
            "$.keys[0].versions[1].version",
            "duplicate version 'V1'",
        ),
        (lambda d: d["namespaces"][0]["keys"].append(ref("K")), "$.namespaces[0].keys[1]", "duplicate key reference"),
        (lambda d: d["namespaces"][0].update(keys=[]), "$.namespaces[0].keys", "at least one key"),
        (
            lambda d: d["changes"].append(
                {
                    "at": "2026-12-01T00:00:00Z",
                    "op": "update_version",
                    "vault": VAULT,
                    "key": "k",
                    "version": "v7",
                    "enabled": False,
                }
            ),
            "$.changes[0].version",
            "has no version 'v7'",
        ),
        (
            lambda d: d["changes"].append(
                {"at": "2026-12-01T00:00:00Z", "op": "delete_key", "vault": VAULT, "key": "nope"}
            ),
            "$.changes[0].key",
            "unknown key 'nope'",
        ),
        (lambda d: d.update(horizon="2026-01-01T00:00:00Z"), "$.horizon", "must be after now"),
        (lambda d: d["vaults"][0].update(soft_delete="yes"), "$.vaults[0].soft_delete", "must be true or false"),
        (lambda d: d["namespaces"][0].pop("id"), "$.namespaces[0].id", "is required"),
        (lambda d: d.update(vaults={}), "$.vaults", "expected a list"),
    ],
)
def test_an_invalid_scenario_is_refused_naming_file_path_and_problem(tmp_path, mutate, path, problem):
    """Each kind of invalid scenario exits 2 with `file: $.path: problem` on stderr and no traceback."""
    document = scenario([namespace("sb", ref("k"))], [key("k")])
    mutate(document)
    stderr = _refused(tmp_path, document)
    assert f"bad.json: {path}: " in stderr
    assert problem in stderr


def test_invalid_json_is_refused_with_its_position(tmp_path):
    """Broken JSON names line and column."""
    stderr = _refused(tmp_path, '{"now": "2026-11-22T00:00:00Z",\n  "vaults": [}')
    assert "invalid JSON at line 2 column 14" in stderr


def test_invalid_yaml_is_refused_with_its_position(tmp_path):
    """Broken YAML names line and column."""
    stderr = _refused(tmp_path, "now: 2026-11-22T00:00:00Z\nvaults: [\n", filename="bad.yaml")
    assert "bad.yaml: $: invalid YAML at line" in stderr


def test_a_document_that_is_not_an_object_is_refused(tmp_path):
    """A JSON list at the top is not a scenario."""
    assert "$: expected an object, got a list" in _refused(tmp_path, "[]")


def test_a_missing_file_is_refused(tmp_path):
    """A path that does not exist exits 2 and says so."""
    run = run_cli("simulate", str(tmp_path / "nope.json"))
    assert run.status == 2
    assert "nope.json: $: file not found" in run.stderr


@pytest.mark.parametrize("option", ["--at", "--horizon"])
def test_a_bad_date_option_is_refused(tmp_path, option):
    """--at and --horizon must be ISO 8601 times."""
    stderr = _refused(tmp_path, _healthy(), option, "next tuesday")
    assert f"{option}: 'next tuesday' is not an ISO 8601 time" in stderr


def test_a_horizon_before_now_is_refused(tmp_path):
    """--horizon must come after now."""
    assert "--horizon: must be after now" in _refused(tmp_path, _healthy(), "--horizon", "2026-01-01T00:00:00Z")


def test_unknown_fields_are_warned_about_not_fatal(tmp_path):
    """A misspelt field is ignored with a warning naming its path, so a typo does not pass silently."""
    document = _healthy()
    document["namespace"] = []
    run = simulate(tmp_path, document)
    assert run.status == 0
    assert "warning: " in run.stderr and "$.namespace: unknown field, ignored" in run.stderr


def test_the_bundled_example_shows_every_finding_the_simulator_can_make():
    """examples/fleet.json (the quick start's fleet) exercises every finding code but monitor-blind."""
    run = run_cli("simulate", str(EXAMPLE), "--format", "json")
    assert run.status == 3
    seen = {f["code"] for n in run.json["namespaces"] for f in n["findings"]}
    assert seen == {c.value for c in Code} - {"monitor-blind"}
    assert {n["status_now"] for n in run.json["namespaces"]} == {"healthy", "degraded", "revoked"}


def test_the_console_script_and_module_entry_points_run():
    """`keyhealth` and `python -m monitor` are installed and answer --version and simulate."""
    env = {**os.environ, "NO_COLOR": "1"}
    script = Path(sys.executable).with_name("keyhealth")
    version_run = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, check=False)
    assert version_run.returncode == 0
    assert version_run.stdout.startswith("keyhealth ")
    module_run = subprocess.run(
        [sys.executable, "-m", "monitor", "simulate", str(EXAMPLE), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert module_run.returncode == 3
    assert len(json.loads(module_run.stdout)["namespaces"]) == len(json.loads(EXAMPLE.read_text())["namespaces"])


def test_a_usage_mistake_exits_2_with_usage():
    """An unknown command is a usage error (argparse's exit 2)."""
    with pytest.raises(SystemExit) as raised:
        run_cli("frobnicate")
    assert raised.value.code == 2
