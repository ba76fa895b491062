"""`keyhealth demo`: the stand-in, `serve` reading it over HTTPS, and the timeline with its events, in one command."""

from __future__ import annotations

import re

from tests.builders import run_cli


def test_the_demo_reads_the_fleet_over_https_then_plays_the_timeline():
    """The demo prints the first poll's table, then each step's change, its delivered events and what /status moved."""
    run = run_cli("demo", "--pace", "0", "--color", "never")
    assert run.status == 0, run.stderr
    out = run.stdout
    assert "a local Azure stand-in serves demo-fleet.json at https://127.0.0.1:" in out
    assert "`keyhealth serve` runs at http://127.0.0.1:" in out
    assert "event KeyNewVersionCreated (sb-audit) delivered: accepted" in out
    assert "NAMESPACE" in out and "sb-orders" in out
    assert "key sb-inventory in kv-payments deleted" in out
    assert "sb-inventory   healthy -> revoked" in out
    assert "sb-inventory   revoked -> healthy" in out
    assert "rotated to version eccbc87e4b5ce2fe28308fd9f2a7baf3 (disabled!)" in out
    assert "sb-audit       healthy -> revoked" in out
    assert "sb-payments    healthy -> degraded" in out
    # The on-call webhook hears each incident change once: the deletion pages, the recovery resolves.
    assert out.count("page -> on-call webhook: [REVOKED] sb-inventory REVOKED: no listed key is usable") == 1
    assert out.count("page -> on-call webhook: [RESOLVED] sb-inventory: revocation cleared") == 1
    assert out.count("page -> on-call webhook: [CRITICAL] (was warning) sb-billing would go Revoked") == 1
    # The Geo-DR pair: its partner lacks access, so a failover would revoke it; paged once, then renotified.
    assert (
        out.count("page -> on-call webhook: [CRITICAL] sb-payments Geo-DR: failover would revoke sb-payments-dr") == 1
    )
    assert "- sb-payments (primary) paired with sb-payments-dr, alias payments: failover would revoke" in out
    # The Event Hubs namespace is judged and paged as a Service Bus one is, named by its kind: its second key's
    # vault keeps Event Hubs out (a firewall without the trusted-services bypass), then its first is disabled.
    assert out.count("page -> on-call webhook: [WARNING] eh-telemetry (Event Hubs) 1 of 2 listed keys usable") == 1
    assert "vault kv-telemetry's firewall keeps Event Hubs out" in " ".join(out.split())
    assert out.count("[REVOKED] eh-telemetry (Event Hubs) REVOKED: no listed key is usable; its event hubs are") == 1
    # The Managed HSM key: its role assignment removed, then given back. No event comes; the poll sees both.
    assert "principal 77777777… now holds nothing on Managed HSM hsm-ledger (no event is sent)" in out
    assert out.count("page -> on-call webhook: [REVOKED] sb-ledger REVOKED: no listed key is usable") == 1
    assert out.count("page -> on-call webhook: [RESOLVED] sb-ledger: revocation cleared") == 1
    # The stand-in's Service Bus polls its keys; the vaults' audit logs give each namespace's next poll. The DR
    # key failed while the other served, so once its access is back the service no longer uses it: paged once.
    assert "the services' own polls, read from the vaults' audit logs" in out
    assert len(re.findall(r"^   sb-payments    next poll at 2026-11-22T00:0\d:\d\d", out, re.MULTILINE)) == 1
    dropped = "page -> on-call webhook: [WARNING] sb-payments Service Bus dropped key sb-payments-dr from its record"
    assert out.count(dropped) == 1
    assert "keyhealth alert" not in run.stderr  # the log sink's lines are not repeated on the terminal
    assert out.rstrip().endswith("watches a real subscription.")


def test_the_demo_prints_the_metrics_it_emitted_when_asked():
    """`--metrics` in a fresh process (its own meter provider): the gauges and counters as an exporter sees them."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--pace", "0", "--metrics"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    metrics = done.stdout.split("Metrics (as an exporter receives them):", 1)[1].splitlines()
    assert any(
        line.startswith("  keyhealth.namespace.status{kind=servicebus,namespace=sb-billing,status=revoked")
        and line.endswith(" 1")
        for line in metrics
    )
    # 15 about the Service Bus namespaces' own keys, 9 (one opening, eight renotifies) about sb-payments' Geo-DR
    # partner, 2 about the Event Hubs namespace eh-telemetry (its firewalled second key, then revoked), 2 about
    # sb-ledger's Managed HSM key (its role assignment removed, then given back).
    assert "  keyhealth.alerts.deliveries{outcome=delivered,sink=oncall} 35" in metrics
    assert any(line.startswith("  keyhealth.polls{outcome=ok} ") for line in metrics)
