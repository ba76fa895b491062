"""The alert configuration (setting KEYHEALTH_ALERTS): named sinks, routes to them, and the default route.

Secrets are never written in it: a sink names the app setting that holds each one (`url_setting`,
`secret_setting`, `routing_key_setting`, `key_setting`), which in Azure is a Key Vault reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from monitor.app.alert_routes import Route, Router
from monitor.app.ports import SinkSpec
from monitor.domain.errors import AlertConfigError
from monitor.domain.incidents import Level

SETTING = "KEYHEALTH_ALERTS"
KINDS = ("webhook", "teams", "slack", "pagerduty", "eventgrid")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Per kind: the fields a sink may have (beyond type and min_level), and which are required.
_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "webhook": ({"url", "url_setting", "secret_setting"}, {"url"}),
    "teams": ({"url", "url_setting"}, {"url"}),
    "slack": ({"url", "url_setting"}, {"url"}),
    "pagerduty": ({"routing_key_setting", "url"}, {"routing_key"}),
    "eventgrid": ({"endpoint", "key_setting"}, {"endpoint"}),
}


@dataclass(frozen=True, slots=True)
class AlertConfig:
    sinks: tuple[SinkSpec, ...] = ()
    router: Router = field(default_factory=Router)

    def sink(self, name: str) -> SinkSpec | None:
        return next((s for s in self.sinks if s.name == name), None)


def _fail(path: str, problem: str) -> AlertConfigError:
    return AlertConfigError(SETTING, path, problem)


def _object(value: object, path: str, known: set[str] | None = None) -> Mapping[str, Any]:
    """`value` as an object; with `known`, any other field is an error. Checked before anything iterates it."""
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {type(value).__name__}")
    if known is None:
        return value
    unknown = sorted(set(value) - known)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", f"unknown field; expected one of: {', '.join(sorted(known))}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, "expected a non-empty string")
    return value.strip()


def _names(value: object, path: str, sinks: set[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, "expected a non-empty list of sink names")
    names = []
    for index, item in enumerate(value):
        name = _string(item, f"{path}[{index}]")
        if name not in sinks:
            raise _fail(f"{path}[{index}]", f"no sink is named {name!r}; sinks: {', '.join(sorted(sinks)) or 'none'}")
        names.append(name)
    return tuple(dict.fromkeys(names))


def _from_setting(item: Mapping[str, Any], field_name: str, path: str, environ: Mapping[str, str]) -> str | None:
    """The value of `field_name`: written in the configuration, or read from the setting `<field>_setting` names."""
    setting = item.get(f"{field_name}_setting")
    if setting is not None:
        name = _string(setting, f"{path}.{field_name}_setting")
        value = environ.get(name, "").strip()
        if not value:
            raise _fail(f"{path}.{field_name}_setting", f"the app setting {name} is not set or empty")
        try:
            value.encode("utf-8")  # bytes that are not UTF-8 reach os.environ as lone surrogates
        except UnicodeEncodeError:
            raise _fail(f"{path}.{field_name}_setting", f"the app setting {name} is not valid UTF-8 text") from None
        return value
    literal = item.get(field_name)
    return None if literal is None else _string(literal, f"{path}.{field_name}")


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _url(value: str | None, path: str) -> str | None:
    """`value` when it is fit for a sink: https, or plain http to this machine only (a test receiver).

    The error never repeats the URL: it may carry a token."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:  # such as an unclosed IPv6 bracket: not a URL
        raise _fail(path, "expected an https:// URL (plain http only to localhost)") from None
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname in _LOOPBACK:
        return value
    raise _fail(path, "expected an https:// URL (plain http only to localhost)")


def _sink(name: str, value: object, path: str, environ: Mapping[str, str]) -> SinkSpec:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if not isinstance(kind, str) or kind not in _FIELDS:  # a list or an object is no type (nor hashable)
        raise _fail(f"{path}.type", f"expected one of: {', '.join(KINDS)}")
    allowed, required = _FIELDS[kind]
    item = _object(value, path, {"type", "min_level", *allowed})
    level = Level.WARNING
    if item.get("min_level") is not None:
        written = _string(item["min_level"], f"{path}.min_level")
        try:
            level = Level.parse(written)
        except ValueError as error:
            raise _fail(f"{path}.min_level", str(error)) from None
    values = {f: _from_setting(item, f, path, environ) for f in ("url", "secret", "routing_key", "key")}
    values["endpoint"] = None if item.get("endpoint") is None else _string(item["endpoint"], f"{path}.endpoint")
    for needed in required:
        if values[needed] is None:
            ways = [w for w in (needed, f"{needed}_setting") if w in allowed]
            raise _fail(path, f"needs {' or '.join(ways)}")
    return SinkSpec(
        name=name,
        kind=kind,
        min_level=level,
        url=_url(values["url"], f"{path}.url"),
        secret=values["secret"],
        routing_key=values["routing_key"],
        endpoint=_url(values["endpoint"], f"{path}.endpoint"),
        key=values["key"],
    )


def parse_alert_config(raw: str, environ: Mapping[str, str]) -> AlertConfig:
    """The configuration in `raw` (JSON, or '@' and a path to a JSON file); empty: no sinks, log only.

    Raises AlertConfigError naming the JSON path of what is wrong.
    """
    text = raw.strip()
    if not text:
        return AlertConfig()
    source = "$"
    if text.startswith("@"):
        file = Path(text[1:].strip())
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise _fail("$", f"cannot read {file}: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise _fail("$", f"cannot read {file}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        source = f"{file}: $"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(source, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise _fail(source, "not JSON that can be read: nested too deeply") from None
    except ValueError as error:  # an integer past Python's 4,300-digit limit
        raise _fail(source, f"not JSON that can be read: {str(error)[:100]}") from None
    root = _object(document, source, {"sinks", "routes", "default"})
    raw_sinks = _object(root.get("sinks") or {}, f"{source}.sinks")
    sinks = []
    for name, value in raw_sinks.items():
        if not _NAME.match(name):
            raise _fail(f"{source}.sinks.{name}", "a sink name is 1-64 letters, digits, '-' or '_'")
        sinks.append(_sink(name, value, f"{source}.sinks.{name}", environ))
    names = {s.name for s in sinks}
    routes = []
    raw_routes = root.get("routes") or []
    if not isinstance(raw_routes, list):
        raise _fail(f"{source}.routes", "expected a list of routes")
    for index, value in enumerate(raw_routes):
        path = f"{source}.routes[{index}]"
        item = _object(value, path, {"sinks", "tags", "namespaces"})
        tags = _object(item.get("tags") or {}, f"{path}.tags")
        patterns = item.get("namespaces") or []
        if not isinstance(patterns, list):
            raise _fail(f"{path}.namespaces", "expected a list of name patterns")
        routes.append(
            Route(
                sinks=_names(item.get("sinks"), f"{path}.sinks", names),
                tags={str(k): _string(v, f"{path}.tags.{k}") for k, v in tags.items()},
                namespaces=tuple(_string(p, f"{path}.namespaces[{i}]") for i, p in enumerate(patterns)),
            )
        )
    default = (
        _names(root["default"], f"{source}.default", names) if root.get("default") is not None else tuple(sorted(names))
    )
    router = Router(routes=tuple(routes), default=default, min_levels={s.name: s.min_level for s in sinks})
    return AlertConfig(sinks=tuple(sinks), router=router)
