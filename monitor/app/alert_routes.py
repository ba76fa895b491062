"""Alert routes: which sinks hear a notice, by level, condition, namespace and key-name patterns, with a
default route (KEYHEALTH_ALERTS' `routes` and `default`)."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from monitor.domain.alert import (
    Alert,
)
from monitor.domain.incidents import (
    Level,
)


@dataclass(frozen=True, slots=True)
class Route:
    """Send alerts of matching namespaces to `sinks`. Every given matcher must match; none given matches all.

    `tags`: each tag (name compared case-insensitively, value exactly) is on the namespace or on one of
    its listed keys. `namespaces`: shell patterns matched, case-insensitively, against the namespace's
    name, or its ARM id when the pattern starts with '/'.
    """

    sinks: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)
    namespaces: tuple[str, ...] = ()

    def matches(self, alert: Alert) -> bool:
        if self.namespaces and not any(_name_matches(pattern, alert) for pattern in self.namespaces):
            return False
        if self.tags:
            present: dict[str, set[str]] = {}
            for tags in (alert.namespace_tags, *(k.tags for k in alert.keys)):
                for name, value in tags.items():
                    present.setdefault(name.lower(), set()).add(value)
            return all(value in present.get(name.lower(), ()) for name, value in self.tags.items())
        return True


def _name_matches(pattern: str, alert: Alert) -> bool:
    subject = alert.namespace_id if pattern.startswith("/") else alert.namespace_name
    return fnmatch.fnmatchcase(subject.lower(), pattern.lower())


@dataclass(frozen=True, slots=True)
class Router:
    """Which sinks hear of an alert: the sinks of every matching route, else the default ones;
    each sink only from its minimum level up."""

    routes: tuple[Route, ...] = ()
    default: tuple[str, ...] = ()
    min_levels: Mapping[str, Level] = field(default_factory=dict)

    def sinks_for(self, alert: Alert) -> tuple[str, ...]:
        chosen: list[str] = []
        for route in self.routes:
            if route.matches(alert):
                chosen.extend(s for s in route.sinks if s not in chosen)
        if not chosen:
            chosen = list(self.default)
        return tuple(s for s in chosen if alert.level >= self.min_levels.get(s, Level.WARNING))
