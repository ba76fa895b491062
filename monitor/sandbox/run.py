"""`keyhealth sandbox SCENARIO --port N`: serve a scenario file until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from monitor.domain.documents import format_instant
from monitor.formats.scenario_io import load_scenario
from monitor.sandbox.events import Schema
from monitor.sandbox.server import Sandbox

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_sandbox(
    scenario_path: Path,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    speed: float = 0.0,
    ca_dir: Path | None = None,
    events_to: str | None = None,
    schema: Schema = "eventgrid",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve the scenario at `scenario_path` until SIGINT/SIGTERM (or until `stop` is set); returns 0.

    Prints the URL, the CA path and the environment a client needs. With `speed` > 0 the sandbox
    clock runs (that many sandbox seconds per second); with `events_to` the Key Vault events the
    timeline implies are POSTed there. Raises ScenarioError for an invalid scenario file and OSError
    when the port cannot be bound.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    scenario, warnings = load_scenario(Path(scenario_path))
    for warning in warnings:
        print(f"keyhealth: warning: {scenario_path}: {warning}", file=err)
    stop = stop or threading.Event()
    sandbox = Sandbox(scenario, host=host, port=port, speed=speed, ca_dir=ca_dir)
    with sandbox:
        if events_to:
            sandbox.deliver_events_to(events_to, schema)
        clock = "running" if speed else "standing still"
        print(f"keyhealth sandbox: serving {scenario_path} at {sandbox.url}", file=out)
        print(f"clock: {format_instant(sandbox.clock.now())} ({clock})", file=out)
        print(f"CA certificate: {sandbox.ca_path}", file=out)
        print("environment for clients:", file=out)
        for name, value in sandbox.environment().items():
            print(f"  export {name}={value}", file=out)
        if events_to:
            print(f"events: {schema} schema to {events_to}", file=out)
        print("Press Ctrl+C to stop.", file=out, flush=True)
        with _stop_on_signals(stop):
            while not stop.wait(0.5):  # a timed wait lets the main thread take signals promptly
                pass
    print("keyhealth sandbox: stopped", file=out, flush=True)
    return 0


class _stop_on_signals:  # noqa: N801 - used like a function, as contextlib's helpers are
    """Set `stop` on SIGINT/SIGTERM while active (only the main thread may install handlers)."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in _SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self._stop.set()

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
