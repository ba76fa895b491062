"""Recording a poll's judgements: batches made while the batch before is written, and a failed write stops
the recording where it failed (the error raised, nothing written after it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from monitor.app import monitor as monitor_module
from monitor.app.monitor import Monitor, record_judgements
from monitor.app.state import NamespaceState, StateSummary
from monitor.domain.errors import StateStoreError
from monitor.domain.findings import Thresholds
from monitor.domain.fleet import evaluate
from tests.builders import key, namespace, ref, scenario
from tests.hardening.support import parsed


class _SlowStore:
    """put_namespace_states that takes a while and notes how many states had been made when each write ended."""

    def __init__(self, made: list[int], fail_first: bool = False) -> None:
        self.made = made
        self.fail_first = fail_first
        self.writes: list[tuple[int, int]] = []  # (states written, states made by the end of the write)

    async def put_namespace_states(
        self, states: Iterable[NamespaceState], *, previous: Mapping[str, StateSummary] | None = None
    ) -> list[str]:
        written = list(states)
        for _ in range(20):
            await asyncio.sleep(0)
        self.writes.append((len(written), self.made[0]))
        if self.fail_first and len(self.writes) == 1:
            raise StateStoreError("namespaces", "refused")
        return []


def _judged(count: int) -> Any:
    fleet = scenario([namespace(f"sb-{n:02d}", ref("k1")) for n in range(count)], [key("k1")])
    return evaluate(parsed(fleet), Thresholds())


@pytest.mark.parametrize("fail_first", [False, True], ids=["all written", "first write fails"])
def test_a_batch_is_made_while_the_one_before_is_written(monkeypatch: pytest.MonkeyPatch, fail_first: bool):
    made = [0]
    real_document = monitor_module.namespace_document  # type: ignore[attr-defined]

    def counting_document(judged: Any) -> Any:
        made[0] += 1
        return real_document(judged)

    monkeypatch.setattr(monitor_module, "namespace_document", counting_document)
    monkeypatch.setattr(monitor_module, "RECORD_BATCH", 10)
    monkeypatch.setattr(monitor_module, "MADE_BETWEEN_YIELDS", 1)
    store = _SlowStore(made, fail_first)
    # Only the store is used in recording.
    monitor = Monitor(readers=None, store=store, thresholds=Thresholds(), instance="a")  # type: ignore[arg-type]
    report = _judged(30)

    async def run() -> tuple[str, ...]:
        return await record_judgements(monitor, report.namespaces, now=report.now, stored={})

    if fail_first:
        with pytest.raises(StateStoreError):
            asyncio.run(run())
        # The second batch was made while the first was written, and never sent once the first failed.
        assert len(store.writes) == 1 and store.writes[0][0] == 10 and store.writes[0][1] > 10
    else:
        changed = asyncio.run(run())
        assert len(changed) == 30 and [w[0] for w in store.writes] == [10, 10, 10]
        # Each write ended after some of the next batch was made: the making overlapped the writing.
        assert store.writes[0][1] > 10 and store.writes[1][1] > 20
