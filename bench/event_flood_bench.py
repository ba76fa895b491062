"""Attack: forged Key Vault events against two real `keyhealth serve` processes on one state store.

Run it with `.venv/bin/python -m bench.event_flood_bench [--events 5000] [--window 10]`.

Two `keyhealth serve` processes (the deployed defaults but for the coalescing window, which `--window`
sets; a webhook secret; one SQLite file) watch the demo fleet in the local Azure stand-in. Whoever holds
the webhook's credential, or Event Grid redelivering, then sends:
- one POST of `--events` events for one key (as many as fit in 1 MB), to one instance;
- the same number in five POSTs inside one window, to one instance;
- one such POST to each instance at once (windows are per process);
- events naming look-alike keys (U+212A KELVIN SIGN, U+017F LONG S, a fullwidth hyphen, a 128-character
  name, a non-Key Vault host), and events from a vault no namespace uses.
Measured from the stand-in's request log: the Key Vault reads of the named key right after each attack
and once a window more has passed (trailing re-reads included), and what each POST was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serve_process import free_port, serve_environment, start_serve
from monitor.entry.webhook import MAX_BODY
from monitor.formats.scenario_io import load_scenario
from monitor.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-for-the-event-flood"  # noqa: S105 - the benchmark's own credential
FLEET = REPO / "monitor" / "data" / "demo-fleet.json"
VAULT = "https://kv-payments.vault.azure.net"
KEY = "sb-orders"
EXPIRED = "Microsoft.KeyVault.KeyExpired"

parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
parser.add_argument("--events", type=int, default=5000, help="events per flood (5,000 fit in one 1 MB POST)")
parser.add_argument("--window", type=float, default=10.0, help="KEYHEALTH_EVENT_COALESCE_SECONDS")
parser.add_argument("--json", type=Path)


def _forged(count: int, *, seed: int, key: str = KEY, vault: str = VAULT) -> list[dict[str, Any]]:
    """`count` events for `key`, or as many as fit in one delivery (MAX_BODY) if fewer."""
    draw = random.Random(seed)  # noqa: S311 - forged versions, not secrets
    events = [
        {
            "id": f"f{seed}-{index}",
            "eventType": EXPIRED,
            "eventTime": "2026-11-22T00:00:00Z",
            "data": {"Id": f"{vault}/keys/{key}/{draw.getrandbits(128):032x}", "ObjectName": key},
        }
        for index in range(count)
    ]
    while len(_body(events)) > MAX_BODY:
        del events[-max(1, (len(_body(events)) - MAX_BODY) // 150) :]
    return events


def _body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events, separators=(",", ":")).encode()


async def _post(port: int, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any], float]:
    body = _body(events)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: keyhealth\r\nContent-Type: application/json\r\n"
        f"x-keyhealth-key: {SECRET}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    try:
        summary = json.loads(payload)
    except ValueError:
        summary = {"raw": payload[:200].decode(errors="replace")}
    return int(status_line.split()[1]), summary, time.monotonic() - started


def _requests(sandbox: Sandbox, key: str = KEY) -> int:
    """Key Vault requests about `key`: its current version, its version listing, the auth challenge."""
    return int(sandbox.requests.count(service="keyvault", path=f"/keys/{key}"))


def _reads(sandbox: Sandbox, key: str = KEY) -> int:
    """Re-reads of `key`: answered GETs of its current version."""
    return sum(
        1
        for record in sandbox.requests.select(service="keyvault", method="GET", status=200)
        if record.path in (f"/keys/{key}", f"/keys/{key}/")
    )


def _keyvault_requests(sandbox: Sandbox) -> int:
    return int(sandbox.requests.count(service="keyvault"))


async def _wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: keyhealth\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            # Healthy and a poll completed: the inventory the events are matched against is stored.
            if answer.startswith(b"HTTP/1.1 200") and b'"last_complete_poll": {' in answer:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("serve did not become healthy within 90 s")


async def _attack(sandbox: Sandbox, ports: list[int], events: int, window: float) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    settle = window * 1.5 + 1

    async def measured(name: str, posts: Any) -> None:
        reads, requests = _reads(sandbox), _requests(sandbox)
        answers = await posts
        name = name.format(sent=sum(summary.get("received", 0) for _, summary, _ in answers))
        right_after = _reads(sandbox) - reads
        await asyncio.sleep(settle)
        figures[name] = {
            "answers": sorted({status for status, _, _ in answers}),
            "outcomes": _sum_outcomes([summary for _, summary, _ in answers]),
            "slowest POST (s)": round(max(seconds for _, _, seconds in answers), 2),
            "key re-reads right after": right_after,
            "key re-reads after a window more": _reads(sandbox) - reads,
            "Key Vault requests for the key": _requests(sandbox) - requests,
        }

    await measured("one POST of {sent} events", asyncio.gather(_post(ports[0], _forged(events, seed=1))))
    fifth = events // 5

    async def five_posts() -> list[tuple[int, dict[str, Any], float]]:
        return [await _post(ports[0], _forged(fifth, seed=10 + n)) for n in range(5)]

    await measured("five POSTs inside one window, {sent} events", five_posts())
    await measured(
        f"one POST to each of {len(ports)} instances at once, {{sent}} events",
        asyncio.gather(*(_post(port, _forged(events, seed=20 + n)) for n, port in enumerate(ports))),
    )
    hostile = [
        *_forged(700, seed=30, key="sb-order\u212a"),  # KELVIN SIGN: str.lower() makes it "k"
        *_forged(700, seed=31, key="sb-orders".replace("s", "\u017f", 1)),  # LONG S: str.upper() makes it "S"
        *_forged(700, seed=32, key="sb\uff0dorders"),  # FULLWIDTH HYPHEN-MINUS
        *_forged(300, seed=33, key="k" * 128),  # one over Key Vault's 127
        *_forged(700, seed=34, vault="https://kv-payments.vault.azure.net.evil.example"),
        *_forged(700, seed=35, vault="https://kv-somebody-else.vault.azure.net"),  # a vault no namespace uses
    ]
    before = _keyvault_requests(sandbox)
    status, summary, seconds = await _post(ports[0], hostile)
    await asyncio.sleep(settle)
    figures[f"one POST of {len(hostile)} look-alike and stranger events"] = {
        "answers": [status],
        "outcomes": summary.get("outcomes"),
        "slowest POST (s)": round(seconds, 2),
        "Key Vault requests (any)": _keyvault_requests(sandbox) - before,
    }
    return figures


def _sum_outcomes(summaries: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for summary in summaries:
        for outcome, count in (summary.get("outcomes") or {}).items():
            total[outcome] = total.get(outcome, 0) + int(count)
    return dict(sorted(total.items()))


def main(argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, Sandbox(load_scenario(FLEET)[0]) as sandbox:
        ports = [free_port(), free_port()]
        environment = serve_environment(
            sandbox,
            folder,
            SECRET,
            KEYHEALTH_EVENT_COALESCE_SECONDS=str(args.window),
            # Only the start-up poll: a scheduled one would read the key too and blur the figures.
            KEYHEALTH_POLL_SCHEDULE="0 0 0 1 1 *",
        )
        logs = [Path(folder) / f"serve-{n}.log" for n in range(len(ports))]
        processes = [start_serve(port, environment, log) for port, log in zip(ports, logs, strict=True)]
        try:
            for port in ports:
                asyncio.run(_wait_healthy(port))
            figures = asyncio.run(_attack(sandbox, ports, args.events, args.window))
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            exits = [process.wait(60) for process in processes]
        text = "\n".join(log.read_text(encoding="utf-8", errors="replace") for log in logs)
    lines = text.splitlines()
    figures["serve"] = {
        "log lines": len(lines),
        "tracebacks": text.count("Traceback"),
        "exit statuses after SIGTERM": exits,
    }
    for name, value in figures.items():
        print(f"{name}: {json.dumps(value)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
