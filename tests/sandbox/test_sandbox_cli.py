"""`keyhealth sandbox` in one process, `keyhealth check` in another, as a person would run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_check_reads_a_sandbox_started_from_the_command_line():
    """The printed exports point `check` at the stand-in; Ctrl+C stops it cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYHEALTH_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "monitor", "sandbox", str(REPO / "examples" / "fleet.json"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        exports: dict[str, str] = {}
        assert server.stdout is not None
        for line in server.stdout:
            if line.strip().startswith("export "):
                name, _, value = line.strip().removeprefix("export ").partition("=")
                exports[name] = value
            if line.startswith("Press Ctrl+C"):
                break
        assert set(exports) == {
            "KEYHEALTH_ARM_ENDPOINT",
            "KEYHEALTH_KEYVAULT_ENDPOINT",
            "KEYHEALTH_CA_BUNDLE",
            "KEYHEALTH_STATIC_TOKEN",
            "KEYHEALTH_LOGS_ENDPOINT",
        }
        check = subprocess.run(
            [sys.executable, "-m", "monitor", "check", "--format", "json", "--at", "2026-11-22T00:00:00Z"],
            capture_output=True,
            text=True,
            env={**env, **exports},
            timeout=120,
            check=False,
        )
        assert check.returncode == 3, check.stderr
        names = {n["name"] for n in json.loads(check.stdout)["namespaces"]}
        listed = json.loads((REPO / "examples" / "fleet.json").read_text())["namespaces"]
        assert names == {n["name"] for n in listed} and {"sb-payments", "sb-telemetry", "eh-clickstream"} <= names
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "keyhealth sandbox: stopped" in out
