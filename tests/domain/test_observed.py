"""The service's own key accesses (Key Vault's audit log) as facts: the phase of its polls, the exact poll that
would revoke a namespace, a call failing where the monitor sees no problem, a key dropped from the record.
Through `simulate`'s JSON (the scenario's `namespaces[].observed`), and the pure phase learning beneath it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.domain.model import KeyAccess
from monitor.domain.observed import ObservedPhase, _polls, learn_phase
from monitor.domain.scenario import parse_scenario
from monitor.domain.scenario_writing import scenario_document
from tests.builders import NOW, VAULT, codes, finding, key, namespace, ref, scenario, simulate, version

START = datetime(2026, 11, 22, tzinfo=UTC)
PHASE = 193.25  # seconds into each 300 s cycle: polls at hh:m3:13.25 and hh:m8:13.25
K1, K2, K3 = f"{VAULT}/keys/k1", f"{VAULT}/keys/k2", f"{VAULT}/keys/k3"


def _poll(at: datetime, *keys: str, status: int = 200) -> list[dict[str, Any]]:
    """One poll: get, then wrap and unwrap, on each key, within a second."""
    calls = []
    for index, url in enumerate(keys):
        for step, operation in enumerate(("KeyGet", "KeyWrap", "KeyUnwrap")):
            at_call = at + timedelta(milliseconds=100 * (3 * index + step))
            calls.append(
                {"at": at_call.isoformat().replace("+00:00", "Z"), "key": url, "operation": operation, "status": status}
            )
    return calls


def _poll_at(k: int) -> datetime:
    """The k-th poll before NOW (k=1: the latest), at PHASE."""
    return START + timedelta(seconds=PHASE - 300 * k)


def _observed(*polls: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"since": "2026-11-21T23:30:00Z", "accesses": [call for poll in polls for call in poll], **fields}


def _fleet(
    observed: dict[str, Any], *keys: dict[str, Any], refs: tuple[str, ...] = ("k1",), changes=None
) -> dict[str, Any]:
    return scenario(
        [namespace("sb-one", *(ref(name) for name in refs), observed=observed)],
        list(keys) or [key("k1")],
        changes=changes,
    )


def _three_polls(*keys: str) -> dict[str, Any]:
    return _observed(*(_poll(_poll_at(k), *keys) for k in (3, 2, 1)))


def test_the_phase_is_learnt_from_three_polls_and_gives_the_next_poll(tmp_path: Path):
    one = simulate(tmp_path, _fleet(_three_polls(K1))).namespace("sb-one")
    observed = one["observed"]
    assert observed["status"] == "observed" and observed["polls_seen"] == 3
    assert observed["phase_seconds"] == PHASE and observed["phase_polls"] == 3 and observed["phase_known"]
    assert observed["next_poll_at"] == "2026-11-22T00:03:13.25Z"
    assert observed["keys"] == [
        {
            "key": K1,
            "last_success": "2026-11-21T23:58:13.45Z",
            "last_failure": None,
            "last_status": 200,
            "dropped": False,
        }
    ]
    assert one["revoked_at"] is None  # nothing is predicted to revoke it
    assert not {"service-access-failing", "key-dropped-from-record"} & codes(one)


def test_an_expiry_is_placed_on_the_services_own_poll_to_the_second(tmp_path: Path):
    """The spec's window keeps its meaning (a poll lands somewhere in [01:00:00, 01:05:00)); the observed phase
    says which instant: 01:03:13.25. At a poll instant itself, that instant (usable means t < exp)."""
    expiring = key("k1", version("v1", exp="2026-11-22T01:00:00Z"))
    one = simulate(tmp_path, _fleet(_three_polls(K1), expiring)).namespace("sb-one")
    assert one["revoked_at_earliest"] == "2026-11-22T01:00:00Z" and one["revoked_by"] == "2026-11-22T01:05:00Z"
    assert one["revoked_at"] == "2026-11-22T01:03:13.25Z"
    on_a_poll = key("k1", version("v1", exp="2026-11-22T00:58:13.25Z"))
    assert simulate(tmp_path, _fleet(_three_polls(K1), on_a_poll)).namespace("sb-one")["revoked_at"] == (
        "2026-11-22T00:58:13.25Z"
    )


def _disabled(start: str, end: str) -> list[dict[str, Any]]:
    return [
        {"at": start, "op": "update_version", "vault": VAULT, "key": "k1", "version": None, "enabled": False},
        {"at": end, "op": "update_version", "vault": VAULT, "key": "k1", "version": None, "enabled": True},
    ]


def test_a_short_outage_between_two_polls_revokes_nothing_and_one_over_a_poll_revokes_at_it(tmp_path: Path):
    missed = _fleet(_three_polls(K1), changes=_disabled("2026-11-22T00:30:00Z", "2026-11-22T00:32:00Z"))
    one = simulate(tmp_path, missed).namespace("sb-one")
    assert one["revoked_at_earliest"] == "2026-11-22T00:30:00Z" and one["revoked_by"] is None
    assert one["revoked_at"] is None  # the polls at 00:28:13.25 and 00:33:13.25 both miss it
    hit = _fleet(_three_polls(K1), changes=_disabled("2026-11-22T00:33:00Z", "2026-11-22T00:34:00Z"))
    assert simulate(tmp_path, hit).namespace("sb-one")["revoked_at"] == "2026-11-22T00:33:13.25Z"


def test_one_poll_is_shown_but_not_trusted_for_the_exact_instant(tmp_path: Path):
    expiring = key("k1", version("v1", exp="2026-11-22T01:00:00Z"))
    one = simulate(tmp_path, _fleet(_observed(_poll(_poll_at(1), K1)), expiring)).namespace("sb-one")
    assert one["observed"]["phase_polls"] == 1 and not one["observed"]["phase_known"]
    assert one["observed"]["next_poll_at"] is None and one["revoked_at"] is None


def test_a_phase_stated_in_the_scenario_is_used_as_known(tmp_path: Path):
    expiring = key("k1", version("v1", exp="2026-11-22T01:00:00Z"))
    one = simulate(tmp_path, _fleet({"phase_seconds": 12.5}, expiring)).namespace("sb-one")
    assert one["revoked_at"] == "2026-11-22T01:00:12.5Z"


def test_the_services_own_call_failing_on_a_key_the_monitor_reads_as_fine_is_critical(tmp_path: Path):
    """A vault firewall without the bypass, a deny assignment: invisible to the monitor's reading, seen in the
    service's 403 on its own call. Critical: it is the service failing now."""
    observed = _observed(
        _poll(_poll_at(3), K1, K2),
        _poll(_poll_at(2), K1) + _poll(_poll_at(2) + timedelta(seconds=1), K2, status=403),
        _poll(_poll_at(1), K1) + _poll(_poll_at(1) + timedelta(seconds=1), K2, status=403),
    )
    one = simulate(tmp_path, _fleet(observed, key("k1"), key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    failing = finding(one, "service-access-failing")
    assert failing["severity"] == "critical" and failing["key"] == K2 and failing["at"] == "2026-11-21T23:58:14.45Z"
    assert (
        "fail (HTTP 403" in failing["message"]
        and "2 polls in a row" in failing["message"]
        and "something the monitor cannot see is in the way" in failing["message"]
    )
    # One failing poll may be a key that changed since: a warning while k1 serves, saying the next poll tells.
    once = _observed(
        _poll(_poll_at(2), K1, K2), _poll(_poll_at(1), K1) + _poll(_poll_at(1) + timedelta(seconds=1), K2, status=403)
    )
    one = simulate(tmp_path, _fleet(once, key("k1"), key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    failing = finding(one, "service-access-failing")
    assert (
        failing["severity"] == "warning"
        and "the service's next poll at 2026-11-22T00:03:13.25Z finds it" in (failing["message"])
    )
    assert one["status_now"] == "healthy"  # the spec's verdict keeps its meaning: the monitor's reading
    assert finding(one, "service-access-failing")["key"] != K1


def test_a_key_that_failed_once_and_is_left_out_of_later_polls_was_dropped_from_the_record(tmp_path: Path):
    """Disabled for ten minutes while k2 served: k1's calls failed, then the service stopped calling it. It is
    enabled again (usable as the monitor reads it), but the namespace no longer uses it."""
    observed = _observed(
        _poll(_poll_at(4), K1, K2),
        _poll(_poll_at(3), K1, status=403) + _poll(_poll_at(3) + timedelta(seconds=1), K2),
        _poll(_poll_at(2), K2),
        _poll(_poll_at(1), K2),
    )
    one = simulate(tmp_path, _fleet(observed, key("k1"), key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    dropped = finding(one, "key-dropped-from-record")
    assert dropped["severity"] == "warning" and dropped["key"] == K1
    assert "az servicebus namespace encryption add --namespace-name sb-one" in dropped["message"]
    assert "service-access-failing" not in codes(one)  # its latest call failed, but the service has moved on
    assert [k["dropped"] for k in one["observed"]["keys"]] == [True, False]


def test_a_failed_latest_call_with_no_later_poll_is_failing_not_dropped(tmp_path: Path):
    observed = _observed(
        _poll(_poll_at(2), K1, K2), _poll(_poll_at(1), K1, status=401) + _poll(_poll_at(1) + timedelta(seconds=1), K2)
    )
    one = simulate(tmp_path, _fleet(observed, key("k1"), key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    assert "service-access-failing" in codes(one) and "key-dropped-from-record" not in codes(one)


def test_a_listed_key_the_latest_two_polls_left_out_was_dropped_though_its_failure_is_older_than_the_window(
    tmp_path: Path,
):
    """The failure that made the service drop k1 is older than the window the monitor reads: the polls that
    call only k2 still show it out of the record."""
    observed = _observed(*(_poll(_poll_at(k), K2) for k in (3, 2, 1)))
    one = simulate(tmp_path, _fleet(observed, key("k1"), key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    dropped = finding(one, "key-dropped-from-record")
    assert dropped["key"] == K1 and "at" not in dropped
    assert "older than the window observed" in dropped["message"]
    # One poll without it is not enough: it may have been listed since.
    single = _observed(_poll(_poll_at(1), K2))
    one = simulate(tmp_path, _fleet(single, key("k1"), key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    assert "key-dropped-from-record" not in codes(one)


def test_a_failing_call_the_monitor_explains_is_a_warning_while_another_key_serves_and_critical_when_none_does(
    tmp_path: Path,
):
    disabled = key("k1", version("v1", enabled=False))
    observed = _observed(_poll(_poll_at(1), K1, status=403) + _poll(_poll_at(1) + timedelta(seconds=1), K2))
    one = simulate(tmp_path, _fleet(observed, disabled, key("k2"), refs=("k1", "k2"))).namespace("sb-one")
    failing = finding(one, "service-access-failing")
    assert failing["severity"] == "warning" and failing["key"] == K1
    assert "as the monitor's reading explains (key-disabled): another key serves the namespace" in failing["message"]
    alone = simulate(tmp_path, _fleet(_observed(_poll(_poll_at(1), K1, status=403)), disabled)).namespace("sb-one")
    failing = finding(alone, "service-access-failing")
    assert failing["severity"] == "critical" and "no listed key serves the namespace now" in failing["message"]


def test_no_diagnostics_is_an_info_finding_and_an_unknown_observation_never_a_verdict(tmp_path: Path):
    expiring = key("k1", version("v1", exp="2026-11-22T01:00:00Z"))
    one = simulate(tmp_path, _fleet({"diagnostics_missing": True}, expiring)).namespace("sb-one")
    missing = finding(one, "diagnostics-missing")
    assert missing["severity"] == "info" and "AuditEvent" in missing["message"]
    assert one["observed"] == {"status": "unknown", "reason": missing["message"].split(": ", 1)[1].split(";")[0]}
    assert one["revoked_at"] is None and one["revoked_at_earliest"] == "2026-11-22T01:00:00Z"
    failed = simulate(tmp_path, _fleet({"unobserved": "the workspace query was throttled (HTTP 429)"})).namespace(
        "sb-one"
    )
    assert failed["observed"] == {"status": "unknown", "reason": "the workspace query was throttled (HTTP 429)"}
    assert failed["status_now"] == "healthy" and not {"diagnostics-missing", "service-access-failing"} & codes(failed)


@pytest.mark.parametrize(
    ("observed", "where", "problem"),
    [
        ({"phase_seconds": 300}, "namespaces[0].observed.phase_seconds", "from 0 up to 300"),
        (
            {"accesses": [{"at": NOW, "key": K1, "operation": "KeyGet", "status": "ok"}]},
            ".accesses[0].status",
            "HTTP status",
        ),
        ({"accesses": [{"at": NOW, "key": "k1", "operation": "KeyGet", "status": 200}]}, ".accesses[0].key", "key URL"),
        ({"accesses": [{"key": K1, "operation": "KeyGet", "status": 200}]}, ".accesses[0].at", "required"),
    ],
)
def test_bad_observations_are_named_by_path(tmp_path: Path, observed: dict[str, Any], where: str, problem: str):
    run = simulate(tmp_path, _fleet(observed))
    assert run.status == 2 and "Traceback" not in run.stderr
    assert where in run.stderr and problem in run.stderr


def test_an_observation_round_trips_through_the_scenario_document():
    document = _fleet(_three_polls(K1) | {"phase_seconds": 193.25})
    parsed, _ = parse_scenario(document)
    again, _ = parse_scenario(scenario_document(parsed))
    assert again.snapshot.namespaces[0].observed == parsed.snapshot.namespaces[0].observed


def _access(at: datetime) -> KeyAccess:
    return KeyAccess(at=at, key=K1, operation="KeyGet", status=200)


def test_phase_learning_wraps_around_the_cycle_and_follows_a_moved_phase():
    around = [_access(START - timedelta(seconds=0.5)), _access(START + timedelta(seconds=300.5))]
    phase = learn_phase(_polls(around))
    assert phase is not None and phase.polls == 2 and phase.seconds == 0.0
    moved = [
        _access(START + timedelta(seconds=10)),
        _access(START + timedelta(seconds=310)),
        _access(START + timedelta(seconds=700)),
    ]
    assert learn_phase(_polls(moved)) == ObservedPhase(
        100.0, 1
    )  # the latest poll's phase; the older ones stop counting


def test_compacting_keeps_one_call_a_key_a_poll_and_judges_the_same():
    from monitor.domain.model import KeyRef, Namespace, NamespaceIdentity, Observation
    from monitor.domain.observed import compacted, observe

    calls = [
        KeyAccess(START + timedelta(seconds=PHASE - 300 * k, milliseconds=100 * step), url, op, status)
        for k in (3, 2, 1)
        for step, (url, op, status) in enumerate(
            [(K1, "KeyGet", 200), (K1, "KeyUnwrap", 200), (K2, "KeyGet", 403 if k == 1 else 200)]
        )
    ]
    kept = compacted(calls)
    assert len(kept) == 6  # two keys, three polls
    assert [a.at for a in kept[::2]] == [calls[0].at, calls[3].at, calls[6].at]  # each poll's first instant stays
    namespace = Namespace(
        id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/sb-one",
        name="sb-one",
        identity=NamespaceIdentity(principal_id="p"),
        keys=(KeyRef(VAULT, "k1"), KeyRef(VAULT, "k2")),
    )
    whole = observe(namespace, Observation(accesses=tuple(calls)))
    small = observe(namespace, Observation(accesses=kept))
    assert whole is not None and small is not None
    assert small.phase == whole.phase and small.polls_seen == whole.polls_seen
    assert [(k.last_status, k.last_failure, k.dropped) for k in small.keys] == [
        (k.last_status, k.last_failure, k.dropped) for k in whole.keys
    ]


def test_what_the_snapshot_stores_of_an_observation_judges_the_keys_alike():
    from monitor.domain.model import KeyRef, Namespace, NamespaceIdentity, Observation
    from monitor.domain.observed import for_storage, observe

    namespace = Namespace(
        id="/subscriptions/s/resourceGroups/rg/providers/Microsoft.ServiceBus/namespaces/sb-one",
        name="sb-one",
        identity=NamespaceIdentity(principal_id="p"),
        keys=(KeyRef(VAULT, "k1"), KeyRef(VAULT, "k2"), KeyRef(VAULT, "k3")),
    )
    # k1 serves throughout; k2 failed in the oldest poll and was dropped; k3 fails in the latest three.
    calls = [
        KeyAccess(_poll_at(4), K1, "KeyUnwrap", 200),
        KeyAccess(_poll_at(4) + timedelta(seconds=1), K2, "KeyGet", 403),
        KeyAccess(_poll_at(4) + timedelta(seconds=2), K3, "KeyUnwrap", 200),
        *(
            access
            for k in (3, 2, 1)
            for access in (
                KeyAccess(_poll_at(k), K1, "KeyUnwrap", 200),
                KeyAccess(_poll_at(k) + timedelta(seconds=2), K3, "KeyGet", 403),
            )
        ),
    ]
    whole = observe(namespace, Observation(accesses=tuple(calls)))
    stored = for_storage(Observation(accesses=tuple(calls)))
    kept = observe(namespace, stored)
    assert whole is not None and kept is not None and whole.phase is not None
    assert len(stored.accesses) < len(calls) and stored.phase == whole.phase.seconds
    assert kept.phase is not None and kept.phase.known and kept.phase.seconds == whole.phase.seconds
    assert [(k.last_status, k.last_success, k.last_failure, k.dropped) for k in kept.keys] == [
        (k.last_status, k.last_success, k.last_failure, k.dropped) for k in whole.keys
    ]
    assert [k.failed_polls >= 2 for k in kept.keys] == [k.failed_polls >= 2 for k in whole.keys] == [False, False, True]
