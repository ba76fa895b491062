"""One frozen Settings object built from app settings (environment variables), each documented."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta

from monitor.domain.errors import SettingError
from monitor.domain.findings import Thresholds


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """How one setting is named, defaulted and described (mirrored in README and local.settings.json.example)."""

    name: str
    default: str
    description: str


SETTINGS: dict[str, SettingSpec] = {
    "warning_days": SettingSpec(
        "KEYHEALTH_WARNING_DAYS",
        "30",
        "A predicted revocation (or key expiry) this many days ahead or closer is a warning.",
    ),
    "critical_days": SettingSpec(
        "KEYHEALTH_CRITICAL_DAYS",
        "7",
        "A predicted revocation (or key expiry) this many days ahead or closer is critical.",
    ),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything keyhealth reads from its environment, validated."""

    warning_days: float = 30.0
    critical_days: float = 7.0

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(warning=timedelta(days=self.warning_days), critical=timedelta(days=self.critical_days))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build Settings from `environ` (default: the process environment).

        Raises SettingError naming the setting whose value is unusable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, float] = {}
        for field in fields(cls):
            spec = SETTINGS[field.name]
            raw = env.get(spec.name, "").strip() or spec.default
            values[field.name] = _days(spec.name, raw)
        settings = cls(**values)
        if settings.critical_days > settings.warning_days:
            raise SettingError(
                SETTINGS["critical_days"].name,
                str(settings.critical_days),
                f"must not exceed {SETTINGS['warning_days'].name} ({settings.warning_days:g})",
            )
        return settings


def _days(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(name, raw, "expected a number of days, such as 30 or 0.5") from None
    if not 0 <= value <= 3650:
        raise SettingError(name, raw, "expected a number of days from 0 to 3650")
    return value
