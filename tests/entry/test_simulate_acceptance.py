"""`keyhealth simulate --format json` gives the spec's answers on the cases the rules single out."""

from __future__ import annotations

from typing import Any

from tests.builders import (
    ALL_NEEDED,
    NOW,
    SYSTEM_PRINCIPAL,
    USER_IDENTITY,
    USER_PRINCIPAL,
    VAULT,
    codes,
    finding,
    key,
    namespace,
    ref,
    scenario,
    simulate,
    vault,
    version,
)

T = "2026-12-01T00:00:00Z"  # a moment nine days after NOW where things happen


def test_a_key_expiring_exactly_now_is_already_unusable(tmp_path):
    """exp == now: `t < exp` fails at now, so the namespace is revoked now and certainly by now + 300 s."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp=NOW))])
    run = simulate(tmp_path, document)
    ns = run.namespace("sb")
    assert ns["status_now"] == "revoked"
    assert ns["usable_keys_now"] == 0
    assert ns["revoked_at_earliest"] == NOW
    assert ns["revoked_by"] == "2026-11-22T00:05:00Z"
    assert finding(ns, "key-expired")["severity"] == "critical"
    assert finding(ns, "revocation-predicted")["severity"] == "critical"
    assert run.status == 3


def test_a_key_expiring_one_second_after_now_is_usable_now(tmp_path):
    """exp == now + 1 s: usable at now, revoked from exp."""
    document = scenario([namespace("sb", ref("k"))], [key("k", version("v1", exp="2026-11-22T00:00:01Z"))])
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["status_now"] == "healthy"
    assert ns["revoked_at_earliest"] == "2026-11-22T00:00:01Z"
    assert ns["revoked_by"] == "2026-11-22T00:05:01Z"


def _gap(seconds: int) -> list[dict[str, Any]]:
    recovered = f"2026-12-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"
    return [
        {"at": T, "op": "delete_key", "vault": VAULT, "key": "k"},
        {"at": recovered, "op": "recover_key", "vault": VAULT, "key": "k"},
    ]


def test_a_stretch_of_exactly_300_seconds_is_certain(tmp_path):
    """A stretch lasting exactly one poll interval cannot be missed: revoked_by = start + 300 s."""
    document = scenario([namespace("sb", ref("k"))], [key("k")], changes=_gap(300))
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["revoked_at_earliest"] == T
    assert ns["revoked_by"] == "2026-12-01T00:05:00Z"


def test_a_stretch_of_299_seconds_is_only_possible(tmp_path):
    """A stretch one second shorter than the poll interval makes revocation possible, not certain."""
    document = scenario([namespace("sb", ref("k"))], [key("k")], changes=_gap(299))
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["revoked_at_earliest"] == T
    assert ns["revoked_by"] is None
    assert "possible, not certain" in finding(ns, "revocation-predicted")["message"]


def test_revoked_by_comes_from_the_first_certain_stretch_after_a_short_one(tmp_path):
    """A short stretch gives revoked_at_earliest; a later long one gives revoked_by."""
    changes = [
        *_gap(120),
        {"at": "2026-12-05T00:00:00Z", "op": "update_version", "vault": VAULT, "key": "k", "enabled": False},
    ]
    document = scenario([namespace("sb", ref("k"))], [key("k")], changes=changes)
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["revoked_at_earliest"] == T
    assert ns["revoked_by"] == "2026-12-05T00:05:00Z"


def test_key_deleted_and_recovered_within_three_minutes(tmp_path):
    """Delete then recover 180 s later: revocation is possible at the delete, never certain."""
    document = scenario([namespace("sb", ref("k"))], [key("k")], changes=_gap(180))
    run = simulate(tmp_path, document)
    ns = run.namespace("sb")
    assert ns["status_now"] == "healthy"
    assert ns["revoked_at_earliest"] == T
    assert ns["revoked_by"] is None
    assert ns["unusable_stretches"] == [
        {"start": T, "end": "2026-12-01T00:03:00Z", "open_ended": False, "certain": False}
    ]
    assert finding(ns, "revocation-predicted")["severity"] == "warning"  # 9 days ahead


def test_pinned_and_versionless_namespaces_part_ways_at_a_rotation(tmp_path):
    """After a rotation a versionless reference follows the new version; a pinned one dies with the old."""
    keys = [key("k", version("v1", exp="2026-12-10T00:00:00Z"))]
    changes = [
        {
            "at": T,
            "op": "new_version",
            "vault": VAULT,
            "key": "k",
            "version": {"version": "v2", "exp": "2028-01-01T00:00:00Z"},
        }
    ]
    document = scenario(
        [namespace("sb-pinned", ref("k", version_id="v1")), namespace("sb-versionless", ref("k"))],
        keys,
        changes=changes,
    )
    run = simulate(tmp_path, document)
    versionless = run.namespace("sb-versionless")
    pinned = run.namespace("sb-pinned")
    assert versionless["revoked_at_earliest"] is None
    assert versionless["revoked_by"] is None
    assert pinned["revoked_at_earliest"] == "2026-12-10T00:00:00Z"
    assert pinned["revoked_by"] == "2026-12-10T00:05:00Z"
    assert finding(pinned, "version-pinned")["severity"] == "warning"
    assert "version-pinned" not in codes(versionless)


def test_a_pinned_version_still_used_after_rotation_is_flagged(tmp_path):
    """Judged after the rotation, the pinned namespace is warned that it no longer follows the key."""
    keys = [key("k", version("v1", exp="2026-12-10T00:00:00Z"), version("v2", created="2026-11-01T00:00:00Z"))]
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k", version_id="v1"))], keys)).namespace("sb")
    pinned = finding(ns, "version-pinned")
    assert pinned["severity"] == "warning"
    assert "rotated to v2" in pinned["message"]
    assert "az servicebus namespace encryption add" in pinned["message"]


def test_a_disabled_new_version_revokes_versionless_namespaces(tmp_path):
    """A rotation to a disabled version leaves versionless references with nothing usable."""
    changes = [
        {"at": T, "op": "new_version", "vault": VAULT, "key": "k", "version": {"version": "v2", "enabled": False}}
    ]
    document = scenario(
        [namespace("sb", ref("k")), namespace("sb-pinned", ref("k", version_id="v1"))], [key("k")], changes=changes
    )
    run = simulate(tmp_path, document)
    assert run.namespace("sb")["revoked_at_earliest"] == T
    assert run.namespace("sb")["revoked_by"] == "2026-12-01T00:05:00Z"
    assert run.namespace("sb-pinned")["revoked_at_earliest"] is None


def test_a_disabled_current_version_is_reported_as_a_broken_rotation(tmp_path):
    """Now on a disabled new version while an older one would work: key-disabled and new-version-unusable."""
    keys = [key("k", version("v1"), version("v2", created="2026-11-20T00:00:00Z", enabled=False))]
    run = simulate(tmp_path, scenario([namespace("sb", ref("k"))], keys))
    ns = run.namespace("sb")
    assert ns["status_now"] == "revoked"
    assert finding(ns, "key-disabled")["severity"] == "critical"
    broken = finding(ns, "new-version-unusable")
    assert broken["severity"] == "critical"
    assert "v1" in broken["message"]
    assert (
        "az keyvault key set-attributes --vault-name kv-test --name k --version v2 --enabled true"
        in (finding(ns, "key-disabled")["message"])
    )


def test_key_ops_without_wrap_key_make_a_key_unusable(tmp_path):
    """key_ops listing unwrapKey but not wrapKey fail rule 5."""
    keys = [key("k", version("v1", key_ops=["encrypt", "decrypt", "unwrapKey"]))]
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k"))], keys)).namespace("sb")
    assert ns["status_now"] == "revoked"
    assert "key-ops-missing" in codes(ns)


def test_key_ops_absent_mean_no_limit(tmp_path):
    """A version with no key_ops listed can wrap and unwrap."""
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k"))], [key("k")])).namespace("sb")
    assert ns["status_now"] == "healthy"


def _two_identity_namespace() -> dict[str, object]:
    return namespace(
        "sb",
        ref("k-system"),
        ref("k-user", identity=USER_IDENTITY),
        user_assigned={USER_IDENTITY: USER_PRINCIPAL},
    )


def test_access_removed_for_the_system_identity_while_a_user_assigned_reference_survives(tmp_path):
    """Removing the system identity's access loses one reference; the user-assigned one keeps the namespace."""
    changes = [{"at": T, "op": "set_access", "vault": VAULT, "principal": SYSTEM_PRINCIPAL, "permissions": []}]
    document = scenario([_two_identity_namespace()], [key("k-system"), key("k-user")], changes=changes)
    before = simulate(tmp_path, document).namespace("sb")
    assert before["status_now"] == "healthy"
    assert before["revoked_at_earliest"] is None
    after = simulate(tmp_path, document, "--at", "2026-12-02T00:00:00Z").namespace("sb")
    assert after["status_now"] == "degraded"
    assert after["usable_keys_now"] == 1
    denied = finding(after, "access-denied")
    assert denied["key"] == f"{VAULT}/keys/k-system"
    assert SYSTEM_PRINCIPAL in denied["message"]
    assert "az keyvault set-policy --name kv-test" in denied["message"]
    assert finding(after, "no-redundancy")["severity"] == "warning"


def test_access_removed_for_both_identities_revokes(tmp_path):
    """When the user-assigned identity loses access too, the namespace goes Revoked then."""
    changes = [
        {"at": T, "op": "set_access", "vault": VAULT, "principal": SYSTEM_PRINCIPAL, "permissions": []},
        {
            "at": "2026-12-03T00:00:00Z",
            "op": "set_access",
            "vault": VAULT,
            "principal": USER_PRINCIPAL,
            "permissions": ["get", "wrapKey"],
        },
    ]
    document = scenario([_two_identity_namespace()], [key("k-system"), key("k-user")], changes=changes)
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["revoked_at_earliest"] == "2026-12-03T00:00:00Z"
    assert ns["revoked_by"] == "2026-12-03T00:05:00Z"


def test_a_user_assigned_identity_the_namespace_lacks_is_identity_missing(tmp_path):
    """A reference naming a user-assigned identity not on the namespace is unusable."""
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k", identity=USER_IDENTITY))], [key("k")])).namespace("sb")
    assert ns["status_now"] == "revoked"
    assert "identity-missing" in codes(ns)


def test_no_system_identity_is_identity_missing(tmp_path):
    """A versionless reference without identity needs the system-assigned one."""
    document = scenario([namespace("sb", ref("k"), principal=None)], [key("k")])
    assert "identity-missing" in codes(simulate(tmp_path, document).namespace("sb"))


def test_vault_deleted_then_recovered(tmp_path):
    """A deleted vault makes every key in it unusable until it is recovered."""
    other = "https://kv-other.vault.azure.net"
    changes = [
        {"at": T, "op": "delete_vault", "vault": VAULT},
        {"at": "2026-12-01T01:00:00Z", "op": "recover_vault", "vault": VAULT},
    ]
    document = scenario(
        [namespace("sb", ref("k")), namespace("sb-elsewhere", ref("k2", vault_uri=other))],
        [key("k"), key("k2", vault_uri=other)],
        vaults=[vault(), vault(other)],
        changes=changes,
    )
    run = simulate(tmp_path, document)
    ns = run.namespace("sb")
    assert ns["revoked_at_earliest"] == T
    assert ns["revoked_by"] == "2026-12-01T00:05:00Z"
    assert ns["unusable_stretches"][0]["end"] == "2026-12-01T01:00:00Z"
    assert run.namespace("sb-elsewhere")["revoked_at_earliest"] is None


def test_a_vault_deleted_before_now_is_vault_missing(tmp_path):
    """A change in the past counts: the vault is gone now."""
    changes = [{"at": "2026-11-21T00:00:00Z", "op": "delete_vault", "vault": VAULT}]
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k"))], [key("k")], changes=changes)).namespace("sb")
    assert ns["status_now"] == "revoked"
    assert finding(ns, "vault-missing")["severity"] == "critical"


def test_names_and_uris_compare_case_insensitively_and_without_trailing_slash(tmp_path):
    """Vault URIs, key names, versions and principal ids match whatever their case or trailing slash."""
    document = scenario(
        [
            namespace(
                "sb",
                ref("SB-CMK", vault_uri="https://KV-Test.Vault.Azure.NET/", version_id="ABCDEF"),
                ref("sb-cmk", vault_uri="https://kv-test.vault.azure.net//", identity=USER_IDENTITY.upper()),
                principal=SYSTEM_PRINCIPAL.upper(),
                user_assigned={USER_IDENTITY: USER_PRINCIPAL},
            )
        ],
        [key("sb-cmk", version("abcdef"), vault_uri="https://kv-test.vault.azure.net")],
        vaults=[
            vault(
                "https://kv-test.vault.azure.net/",
                access={SYSTEM_PRINCIPAL: ALL_NEEDED, USER_PRINCIPAL.upper(): ALL_NEEDED},
            )
        ],
        changes=[{"at": T, "op": "delete_key", "vault": "HTTPS://KV-TEST.VAULT.AZURE.NET/", "key": "Sb-Cmk"}],
    )
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["status_now"] == "healthy"
    assert ns["usable_keys_now"] == 2
    assert ns["revoked_at_earliest"] == T


def test_nbf_makes_a_version_usable_from_that_instant(tmp_path):
    """A version is usable from nbf exactly (nbf <= t)."""
    keys = [key("k", version("v1", nbf="2026-11-22T00:10:00Z"))]
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k"))], keys)).namespace("sb")
    assert ns["status_now"] == "revoked"
    assert ns["unusable_stretches"] == [
        {"start": NOW, "end": "2026-11-22T00:10:00Z", "open_ended": False, "certain": True}
    ]
    assert "key-not-yet-valid" in codes(ns)


def test_an_absent_key_is_missing(tmp_path):
    """A key absent from `keys` does not exist."""
    ns = simulate(tmp_path, scenario([namespace("sb", ref("gone"))], [])).namespace("sb")
    assert ns["status_now"] == "revoked"
    assert "key-missing" in codes(ns)


def test_a_purged_key_is_gone_until_created_again(tmp_path):
    """purge_key removes the key; a later new_version creates it afresh."""
    changes: list[dict[str, Any]] = [
        {"at": T, "op": "purge_key", "vault": VAULT, "key": "k"},
        {"at": "2026-12-01T02:00:00Z", "op": "new_version", "vault": VAULT, "key": "k", "version": {"version": "v9"}},
    ]
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k"))], [key("k")], changes=changes)).namespace("sb")
    assert ns["unusable_stretches"][0] == {
        "start": T,
        "end": "2026-12-01T02:00:00Z",
        "open_ended": False,
        "certain": True,
    }


def test_update_version_without_version_changes_the_current_one_at_that_time(tmp_path):
    """update_version with version null targets the version current at `at`, not a later one."""
    changes: list[dict[str, Any]] = [
        {"at": T, "op": "update_version", "vault": VAULT, "key": "k", "version": None, "exp": "2026-12-02T00:00:00Z"},
        {"at": "2026-12-03T00:00:00Z", "op": "new_version", "vault": VAULT, "key": "k", "version": {"version": "v2"}},
    ]
    ns = simulate(tmp_path, scenario([namespace("sb", ref("k"))], [key("k")], changes=changes)).namespace("sb")
    assert ns["unusable_stretches"] == [
        {"start": "2026-12-02T00:00:00Z", "end": "2026-12-03T00:00:00Z", "open_ended": False, "certain": True}
    ]


def test_an_open_ended_stretch_near_the_horizon_is_certain(tmp_path):
    """A stretch that lasts to the horizon counts as certain even when shorter than 300 s there."""
    keys = [key("k", version("v1", exp="2026-11-22T23:58:00Z"))]
    document = scenario([namespace("sb", ref("k"))], keys, horizon="2026-11-23T00:00:00Z")
    ns = simulate(tmp_path, document).namespace("sb")
    assert ns["revoked_at_earliest"] == "2026-11-22T23:58:00Z"
    assert ns["revoked_by"] == "2026-11-23T00:03:00Z"


def test_nothing_after_the_horizon_is_predicted(tmp_path):
    """An expiry past the horizon yields no revocation; --horizon can move it."""
    keys = [key("k", version("v1", exp="2027-03-01T00:00:00Z"))]
    document = scenario([namespace("sb", ref("k"))], keys)
    assert simulate(tmp_path, document, "--horizon", "2027-01-01T00:00:00Z").namespace("sb")["revoked_by"] is None
    default = simulate(tmp_path, document)
    assert default.json["horizon"] == "2027-11-22T00:00:00Z"
    assert default.namespace("sb")["revoked_at_earliest"] == "2027-03-01T00:00:00Z"


def test_at_moves_now_for_what_if(tmp_path):
    """--at judges the scenario as if now were that instant."""
    keys = [key("k", version("v1", exp=T))]
    run = simulate(tmp_path, scenario([namespace("sb", ref("k"))], keys), "--at", "2026-12-01T00:00:00Z")
    assert run.json["now"] == T
    assert run.namespace("sb")["status_now"] == "revoked"


def test_the_all_permission_grants_everything(tmp_path):
    """An access entry of `all` (Crypto Officer, Administrator) includes get, wrapKey and unwrapKey."""
    document = scenario([namespace("sb", ref("k"))], [key("k")], vaults=[vault(access={SYSTEM_PRINCIPAL: ["all"]})])
    assert simulate(tmp_path, document).namespace("sb")["status_now"] == "healthy"


def test_the_output_carries_every_field_of_the_spec(tmp_path):
    """The JSON has now, horizon and per namespace the spec's fields with their types."""
    run = simulate(tmp_path, scenario([namespace("sb", ref("k"))], [key("k")]))
    document = run.json
    assert set(document) == {"now", "horizon", "namespaces"}
    ns = document["namespaces"][0]
    for field in ("name", "id", "status_now", "usable_keys_now", "keys_total", "revoked_at_earliest", "revoked_by"):
        assert field in ns
    assert ns["keys_total"] == 1
    for item in ns["findings"]:
        assert {"code", "severity", "key", "message"} <= set(item)
        assert item["severity"] in {"info", "warning", "critical"}
