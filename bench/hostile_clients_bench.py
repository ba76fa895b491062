"""Attack: hostile clients against a real `keyhealth serve` process with its default limits.

Run it with `.venv/bin/python -m bench.hostile_clients_bench [--slow 20] [--flood 300] [--abandon 20]`.

`keyhealth serve` runs as a child process (the deployed defaults: 15 s for a request head, 30 s for a body,
256 connections) against the local Azure stand-in, with a webhook secret. Then, at once:
- `--slow` slowloris clients each send a request line and then one header line a second, never the end;
- `--flood` clients open connections and send nothing;
- `--abandon` clients send a request head with a 100 kB Content-Length, a few bytes, and hang up;
- `--stall` clients send a whole head and part of the body, then nothing.
Measured: how long until the server cut each slow client off, how many flood connections it refused
(503) or closed, what the stalled bodies were answered, whether `/healthz` still answered during the
attack, and what the server logged (ERROR lines, tracebacks, "abandoned" lines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.serve_process import free_port, serve_environment, start_serve
from monitor.formats.scenario_io import load_scenario
from monitor.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-for-the-hostile-clients"  # noqa: S105 - the benchmark's own credential
FLEET = REPO / "monitor" / "data" / "demo-fleet.json"


async def _slowloris(port: int) -> float:
    """Seconds until the server hung up on a client that never finishes its head."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/events HTTP/1.1\r\nHost: keyhealth\r\n")
    sent = 0
    while time.monotonic() - started < 120:
        try:
            writer.write(f"X-Slow-{sent}: y\r\n".encode())
            await writer.drain()
            if await asyncio.wait_for(reader.read(1), timeout=1.0) == b"":
                break
        except TimeoutError:
            sent += 1
            continue
        except ConnectionError:
            break
    writer.close()
    return time.monotonic() - started


async def _idle(port: int) -> str:
    """What an idle connection got: a 503 at once, or closed after the header timeout."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        return f"connect failed: {type(error).__name__}"
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=120)
    except (TimeoutError, ConnectionError):
        answer = b"?"
    writer.close()
    if answer.startswith(b"HTTP/1.1 503"):
        return "503 at once" if time.monotonic() - started < 5 else "503 late"
    return "closed" if answer == b"" else answer[:20].decode(errors="replace")


def _head(length: int) -> bytes:
    return (
        f"POST /api/events HTTP/1.1\r\nHost: keyhealth\r\nContent-Type: application/json\r\n"
        f"x-keyhealth-key: {SECRET}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def _abandon(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head(100_000) + b'[{"id": "abandoned", ')
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()


async def _stall(port: int) -> tuple[float, str]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head(1_000) + b'[{"id": "stalled", ')
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=120)
    writer.close()
    return time.monotonic() - started, answer.split(b"\r\n", 1)[0].decode(errors="replace")


async def _healthz(port: int) -> int | str:
    """The status /healthz answered, or how the connection failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: keyhealth\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=30)
        writer.close()
    except (OSError, TimeoutError) as error:
        return type(error).__name__
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else repr(answer[:20])


async def _attack(port: int, slow: int, flood: int, abandon: int, stall: int) -> dict[str, Any]:
    slow_tasks = [asyncio.ensure_future(_slowloris(port)) for _ in range(slow)]
    stall_tasks = [asyncio.ensure_future(_stall(port)) for _ in range(stall)]
    await asyncio.gather(*(_abandon(port) for _ in range(abandon)))
    flood_tasks = [asyncio.ensure_future(_idle(port)) for _ in range(flood)]
    await asyncio.sleep(2)
    during = await _healthz(port)  # over the cap it is refused like any other connection
    cut_off = await asyncio.gather(*slow_tasks)
    flooded = await asyncio.gather(*flood_tasks)
    stalled = await asyncio.gather(*stall_tasks)
    after = await _healthz(port)
    outcomes: dict[str, int] = {}
    for outcome in flooded:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "slowloris clients": slow,
        "slowloris cut off after (s, min/max)": [round(min(cut_off), 1), round(max(cut_off), 1)] if cut_off else None,
        "idle flood connections": flood,
        "idle flood outcomes": outcomes,
        "stalled bodies": stall,
        "stalled body answers": sorted({answer for _, answer in stalled}),
        "stalled body answered after (s, max)": round(max(t for t, _ in stalled), 1) if stalled else None,
        "abandoned bodies": abandon,
        "/healthz during the attack": during,
        "/healthz after the attack": after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--flood", type=int, default=300)
    parser.add_argument("--abandon", type=int, default=20)
    parser.add_argument("--stall", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, help="also copy serve's log here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, Sandbox(load_scenario(FLEET)[0]) as sandbox:
        log_path = Path(folder) / "serve.log"
        port = free_port()
        process = start_serve(port, serve_environment(sandbox, folder, SECRET), log_path)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if asyncio.run(_healthz(port)) in (200, 503):
                        break
                except OSError:
                    time.sleep(0.2)
            figures = asyncio.run(_attack(port, args.slow, args.flood, args.abandon, args.stall))
        finally:
            process.send_signal(signal.SIGTERM)
            exit_status = process.wait(60)
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if args.log:
            args.log.write_text(text)
    lines = text.splitlines()
    figures.update(
        {
            "serve log lines": len(lines),
            "ERROR lines": sum(" ERROR " in line for line in lines),
            "tracebacks": text.count("Traceback"),
            "abandoned lines (INFO)": sum("abandoned its body" in line and " INFO " in line for line in lines),
            "serve exit status after SIGTERM": exit_status,
        }
    )
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
