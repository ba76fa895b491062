"""Key Vault's name grammar, and the only case folding names get: ASCII.

Key Vault accepts key names of 1-127 ASCII letters, digits and hyphens, versions of 32 hex digits, and
vault (or Managed HSM) names of 3-24 letters, digits and hyphens that start with a letter, end with a
letter or digit and hold no `--`; it compares them ignoring ASCII case. `str.lower()` folds far more
(U+212A KELVIN SIGN becomes `k`, U+0130 becomes two characters), so a name from outside folded that way
can match a stored name Key Vault would never match, and then be sent as spelled. Everything from an
event, a scenario or an Azure answer is checked here before it is matched or sent.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = str.maketrans(_UPPER, _UPPER.lower())

KEY_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
VERSION = re.compile(r"[0-9A-Fa-f]{32}")
VAULT_NAME = re.compile(r"(?!.*--)[A-Za-z][0-9A-Za-z-]{1,22}[0-9A-Za-z]")
# The DNS suffixes of Key Vault and Managed HSM in the public, China and US Government clouds.
VAULT_SUFFIXES = (
    "vault.azure.net",
    "vault.azure.cn",
    "vault.usgovcloudapi.net",
    "managedhsm.azure.net",
    "managedhsm.azure.cn",
    "managedhsm.usgovcloudapi.net",
)


def ascii_fold(text: str) -> str:
    """`text` with A-Z lowered and nothing else changed: how Key Vault and ARM compare names."""
    return text.translate(_ASCII_LOWER)


def is_key_name(text: str) -> bool:
    return KEY_NAME.fullmatch(text) is not None


def is_version(text: str) -> bool:
    return VERSION.fullmatch(text) is not None


def is_vault_name(text: str) -> bool:
    return VAULT_NAME.fullmatch(text) is not None


def vault_host_problem(host: str) -> str | None:
    """None when `host` is `<vault name>.<a Key Vault DNS suffix>`, else what is wrong with it."""
    name, _, suffix = host.partition(".")
    if ascii_fold(suffix) not in VAULT_SUFFIXES:
        return f"{_shown(host)} is not a Key Vault or Managed HSM host (*.{', *.'.join(VAULT_SUFFIXES[:2])}, …)"
    if not is_vault_name(name):
        return f"{_shown(name)} is not a vault name (3-24 letters, digits and single hyphens, from a letter)"
    return None


def key_name_problem(text: str) -> str | None:
    """None for a key name Key Vault accepts, else why not."""
    if is_key_name(text):
        return None
    return f"{_shown(text)} is not a Key Vault key name (1-127 ASCII letters, digits and hyphens)"


def version_problem(text: str) -> str | None:
    """None for a key version Key Vault issues, else why not."""
    return None if is_version(text) else f"{_shown(text)} is not a Key Vault key version (32 hex digits)"


# Service Bus namespace names: 6-50 letters, digits and hyphens, from a letter, to a letter or digit, not ending
# in -sb or -mgmt. Resource groups: 1-90 letters, digits, underscores, hyphens, periods, parentheses, not ending
# in a period. Subscriptions: GUIDs.
# ASCII-only case folding (re.ASCII): under Unicode rules IGNORECASE lets U+212A match `k` and U+017F `s`.
NAMESPACE_NAME = re.compile(r"(?!.*-(?:sb|mgmt)$)[A-Za-z][0-9A-Za-z-]{4,48}[0-9A-Za-z]", re.ASCII | re.IGNORECASE)
_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# Tenant, application, object (principal) and workspace ids.
GUID = re.compile(_GUID)


def is_guid(text: object) -> bool:
    return isinstance(text, str) and GUID.fullmatch(text) is not None


def _namespace_id(provider: str) -> re.Pattern[str]:
    return re.compile(
        rf"/subscriptions/{_GUID}/resourceGroups/(?u:[-\w.()]{{0,89}}[-\w()])/providers/{re.escape(provider)}/"
        rf"namespaces/{NAMESPACE_NAME.pattern}",
        re.ASCII | re.IGNORECASE,
    )


# Event Hubs namespace names follow the same rules.
NAMESPACE_IDS = {
    "Microsoft.ServiceBus": _namespace_id("Microsoft.ServiceBus"),
    "Microsoft.EventHub": _namespace_id("Microsoft.EventHub"),
}
_SERVICES = {"Microsoft.ServiceBus": "Service Bus", "Microsoft.EventHub": "Event Hubs"}


def namespace_id_problem(text: str, provider: str = "Microsoft.ServiceBus") -> str | None:
    """None for the ARM id of a namespace of `provider` as ARM spells one, else why not."""
    if NAMESPACE_IDS[provider].fullmatch(text) is not None:
        return None
    return (
        f"{_shown(text)} is not a {_SERVICES[provider]} namespace id "
        f"(/subscriptions/<guid>/resourceGroups/<group>/providers/{provider}/namespaces/<name>)"
    )


def is_namespace_name(text: str) -> bool:
    return NAMESPACE_NAME.fullmatch(text) is not None


def _shown(text: str) -> str:
    # ascii(): a hostile name is shown escaped (U+212A as \u212a), clipped, never as look-alike text
    shown = ascii(text)
    return shown if len(shown) <= 80 else shown[:79] + "…"


def vault_uri_host(vault_uri: str) -> str | None:
    """The lower-case host of an https vault URI without a path (port 443 allowed), else None."""
    try:
        parts = urlsplit(vault_uri.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or parts.username or parts.password or parts.query or parts.fragment:
        return None
    if port not in (None, 443) or parts.path not in ("", "/") or not parts.hostname:
        return None
    # The host as written (urlsplit's `hostname` lowers it the Unicode way): Key Vault's grammar, ASCII folded.
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    return ascii_fold(host) if vault_host_problem(host) is None else None
