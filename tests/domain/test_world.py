"""World: the snapshot with its changes applied, and which change it reports when one cannot apply."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.domain.errors import ScenarioError
from monitor.domain.model import Key, KeyVersion, Snapshot, UpdateVersion, Vault
from monitor.domain.world import World

VAULT = "https://kv-test.vault.azure.net"
T1 = datetime(2026, 12, 1, tzinfo=UTC)
T2 = datetime(2026, 12, 2, tzinfo=UTC)


def test_the_change_reported_is_the_first_in_time_order_that_cannot_apply():
    """Changes apply per key, but of two that cannot, the earlier one is reported, wherever it is listed."""
    snapshot = Snapshot(
        vaults=(Vault(VAULT),),
        keys=(Key(VAULT, "k", (KeyVersion("v1", datetime(2026, 1, 1, tzinfo=UTC)),)),),
    )
    changes = [
        UpdateVersion(at=T2, vault=VAULT, key="later", enabled=False),
        UpdateVersion(at=T1, vault=VAULT, key="k", version="v1", enabled=False),
        UpdateVersion(at=T1, vault=VAULT, key="earlier", enabled=False),
    ]
    with pytest.raises(ScenarioError) as raised:
        World(snapshot, changes)
    assert raised.value.path == "$.changes[2].key"
