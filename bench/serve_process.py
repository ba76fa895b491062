"""A real `keyhealth serve` child process against the local stand-in, for the attack benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from monitor.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_environment(sandbox: Sandbox, folder: str | Path, secret: str, **settings: str) -> dict[str, str]:
    """This process's environment without its KEYHEALTH_ settings, then the stand-in's, a SQLite file in
    `folder`, the webhook secret and `settings`: the deployed defaults but for what a benchmark names."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEYHEALTH_")},
        **sandbox.environment(),
        "KEYHEALTH_SQLITE_PATH": str(Path(folder) / "state.sqlite"),
        "KEYHEALTH_WEBHOOK_SECRET": secret,
        **settings,
    }


def start_serve(port: int, environment: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`keyhealth serve` on 127.0.0.1:`port`, its output in `log_path`."""
    command = [sys.executable, "-m", "monitor", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=REPO, env=dict(environment), stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
