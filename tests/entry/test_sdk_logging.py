"""The Azure SDK's per-request HTTP logging stays out of the log unless KEYHEALTH_LOG_LEVEL=debug asks for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from monitor.entry.bootstrap import AZURE_LOGGERS
from tests.hardening.support import fleet_document, serving


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    names = (*AZURE_LOGGERS, "keyhealth")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _azure_records_of_a_poll(tmp_path, caplog, **environment: str) -> list[logging.LogRecord]:
    async def run() -> None:
        async with serving(tmp_path, fleet_document(), **environment):
            pass  # the start-up poll read every namespace and key through the real SDK clients

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    return [r for r in caplog.records if r.name.startswith("azure") and r.levelno < logging.WARNING]


def test_a_poll_writes_no_azure_sdk_request_lines_by_default(tmp_path, caplog):
    assert _azure_records_of_a_poll(tmp_path, caplog) == []
    assert any(r.name == "keyhealth" for r in caplog.records)  # keyhealth's own INFO lines still come through


def test_debug_lets_the_sdk_http_logging_through(tmp_path, caplog):
    records = _azure_records_of_a_poll(tmp_path, caplog, KEYHEALTH_LOG_LEVEL="debug")
    assert any(r.name == "azure.core.pipeline.policies.http_logging_policy" for r in records)
