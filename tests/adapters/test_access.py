"""Role definitions' data actions become the key permissions Service Bus needs."""

from __future__ import annotations

import pytest

from monitor.adapters.access import permissions_from_data_actions

ALL = frozenset({"get", "wrapkey", "unwrapkey"})


@pytest.mark.parametrize(
    ("data_actions", "not_data_actions", "expected"),
    [
        (  # Key Vault Crypto Service Encryption User
            [
                "Microsoft.KeyVault/vaults/keys/read",
                "Microsoft.KeyVault/vaults/keys/wrap/action",
                "Microsoft.KeyVault/vaults/keys/unwrap/action",
            ],
            [],
            ALL,
        ),
        (["Microsoft.KeyVault/vaults/keys/*"], [], ALL),  # Key Vault Crypto Officer
        (["Microsoft.KeyVault/vaults/*"], [], ALL),  # Key Vault Administrator
        (["*"], [], ALL),
        (["Microsoft.KeyVault/vaults/keys/*"], ["Microsoft.KeyVault/vaults/keys/unwrap/action"], ALL - {"unwrapkey"}),
        (["Microsoft.KeyVault/vaults/keys/read"], [], frozenset({"get"})),  # Key Vault Reader's key part
        (["Microsoft.KeyVault/vaults/secrets/*"], [], frozenset()),
    ],
)
def test_data_actions_map_to_permissions(data_actions, not_data_actions, expected):
    """Wildcards grant, NotDataActions take away, other resource types grant nothing."""
    assert permissions_from_data_actions(data_actions, not_data_actions) == expected
