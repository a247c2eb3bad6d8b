"""Policy settings: what the policy file may say, with the defaults of docs/policy.md.

The file format (YAML) is read outside the core (`processor.policy_file`); this
module validates the parsed mapping, so every way of loading a policy shares one
set of rules and one set of error messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from processor.policy.events import MAX_DURATION_MS, MailboxKey, normalise_mailbox

#: Milliseconds per duration unit (policy file and topics.yaml alike).
DURATION_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$", re.ASCII)


class PolicyConfigError(ValueError):
    """A policy setting is unknown or has a bad value; the message names it."""


def shown(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to about `limit` characters: an error message quotes what it
    refuses, but a refused value may be megabytes long."""
    if isinstance(value, int) and abs(value) >= 10**limit:
        return "<a huge number>"  # (and repr of one of over 4300 digits would raise)
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}…{text[-4:]} ({len(text)} chars)"


def split_duration(text: object) -> tuple[str, str] | None:
    """`' 1.5h '` -> `('1.5', 'h')`: the number and the unit of a duration, or None when
    `text` is not a string of a non-negative number and one of DURATION_UNITS_MS."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    return None if match is None else (match[1], match[2])


def parse_duration(text: object, setting: str = "duration") -> int:
    """`'500ms' | '30s' | '10m' | '1h' | '2d'` -> milliseconds, from 1 ms to MAX_DURATION_MS.

    Raises PolicyConfigError naming `setting` for anything else, including a bare
    number: a duration without its unit is ambiguous.
    """
    parts = split_duration(text)
    if parts is None:
        raise PolicyConfigError(
            f"{setting}: {shown(text)} is not a duration; write a number with a unit "
            "(500ms, 30s, 10m, 1h, 2d)"
        )
    number, unit = parts
    # Exact arithmetic (no float rounding; Decimal reads any number of digits).
    value = Fraction(Decimal(number)) * DURATION_UNITS_MS[unit]
    if value < 1 or value.denominator != 1:
        raise PolicyConfigError(
            f"{setting}: {shown(text)} must be a whole number of milliseconds >= 1"
        )
    if value > MAX_DURATION_MS:
        raise PolicyConfigError(
            f"{setting}: {shown(text)} is longer than {format_duration(MAX_DURATION_MS)}, "
            "the longest duration the policy accepts"
        )
    return int(value)


def format_duration(ms: int) -> str:
    """The shortest exact `parse_duration` spelling of `ms`."""
    for unit in ("d", "h", "m", "s"):
        if ms % DURATION_UNITS_MS[unit] == 0:
            return f"{ms // DURATION_UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The lockout policy's settings (docs/policy.md, "Configuration")."""

    threshold: int = 5
    window_ms: int = 10 * 60_000
    first_block_ms: int = 60 * 60_000
    growth_factor: float = 2
    permanent_on_offense: int = 6
    default_synchronized_security: bool = True
    allowlist: frozenset[str] = field(default_factory=frozenset)
    #: A verdict scanned longer ago than this, by the clock, is late (rules 1 and 6).
    max_lateness_ms: int = 24 * 60 * 60_000

    def __post_init__(self) -> None:
        """Raises PolicyConfigError when a timed block would last longer than
        MAX_DURATION_MS (so its end is always a representable time)."""
        last_timed = self.permanent_on_offense - 1
        if last_timed >= 1 and _longer_than_allowed(
            self.first_block_ms, self.growth_factor, last_timed - 1
        ):
            raise PolicyConfigError(
                f"growth_factor: the block of offense {last_timed} would last "
                f"first_block × growth_factor^{last_timed - 1}, longer than "
                f"{format_duration(MAX_DURATION_MS)} (the longest timed block the policy "
                "accepts); lower growth_factor, first_block or permanent_on_offense"
            )

    def block_duration_ms(self, offense: int) -> int | None:
        """How long the block for this offense lasts; None when it is permanent."""
        if offense >= self.permanent_on_offense:
            return None
        return round(self.first_block_ms * self.growth_factor ** (offense - 1))

    def is_allowlisted(self, key: MailboxKey) -> bool:
        """Exact address or `@domain` entry (both compared normalised)."""
        if not self.allowlist:
            return False
        return key.mailbox in self.allowlist or f"@{key.domain}" in self.allowlist

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object] | None) -> PolicyConfig:
        """Validate a parsed policy file. Every key is optional.

        Raises PolicyConfigError naming the first unknown key or bad value.
        """
        if settings is None:
            return cls()
        if not isinstance(settings, Mapping):
            raise PolicyConfigError("the policy file must be a mapping of settings")
        known = {
            "threshold",
            "window",
            "first_block",
            "growth_factor",
            "permanent_on_offense",
            "default_synchronized_security",
            "allowlist",
            "max_lateness",
        }
        for key in settings:
            if key not in known:
                raise PolicyConfigError(
                    f"{str(key)[:60]}: unknown setting (known: {', '.join(sorted(known))})"
                )
        values: dict[str, object] = {}
        if "threshold" in settings:
            values["threshold"] = _positive_int(settings["threshold"], "threshold")
        if "window" in settings:
            values["window_ms"] = parse_duration(settings["window"], "window")
        if "first_block" in settings:
            values["first_block_ms"] = parse_duration(settings["first_block"], "first_block")
        if "growth_factor" in settings:
            values["growth_factor"] = _growth_factor(settings["growth_factor"])
        if "permanent_on_offense" in settings:
            values["permanent_on_offense"] = _positive_int(
                settings["permanent_on_offense"], "permanent_on_offense"
            )
        if "default_synchronized_security" in settings:
            flag = settings["default_synchronized_security"]
            if not isinstance(flag, bool):
                raise PolicyConfigError(
                    f"default_synchronized_security: {shown(flag)} must be true or false"
                )
            values["default_synchronized_security"] = flag
        if "allowlist" in settings:
            values["allowlist"] = _allowlist(settings["allowlist"])
        if "max_lateness" in settings:
            values["max_lateness_ms"] = parse_duration(settings["max_lateness"], "max_lateness")
        return cls(**values)  # type: ignore[arg-type]

    def to_mapping(self) -> dict[str, object]:
        """The policy file spelling of these settings (round-trips through from_mapping)."""
        return {
            "threshold": self.threshold,
            "window": format_duration(self.window_ms),
            "first_block": format_duration(self.first_block_ms),
            "growth_factor": self.growth_factor,
            "permanent_on_offense": self.permanent_on_offense,
            "default_synchronized_security": self.default_synchronized_security,
            "allowlist": sorted(self.allowlist),
            "max_lateness": format_duration(self.max_lateness_ms),
        }


def _positive_int(value: object, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyConfigError(f"{setting}: {shown(value)} must be a whole number >= 1")
    return value


def _growth_factor(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 1 <= value < math.inf
        or (isinstance(value, int) and value > MAX_DURATION_MS)  # float() would overflow
    ):
        raise PolicyConfigError(f"growth_factor: {shown(value)} must be a finite number >= 1")
    return value


def _longer_than_allowed(first_block_ms: int, growth_factor: float, exponent: int) -> bool:
    """Whether `first_block_ms * growth_factor ** exponent` exceeds MAX_DURATION_MS, decided
    without computing a power that could overflow a float."""
    if first_block_ms > MAX_DURATION_MS:
        return True
    if growth_factor == 1 or exponent == 0:
        return False
    # A margin for the logarithms' rounding; the exact product decides near the limit.
    if (
        math.log(first_block_ms) + exponent * math.log(growth_factor)
        > math.log(MAX_DURATION_MS) + 1e-9
    ):
        return True
    return round(first_block_ms * growth_factor**exponent) > MAX_DURATION_MS


def _allowlist(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        raise PolicyConfigError(
            f"allowlist: {shown(value)} must be a list of addresses or '@domain'"
        )
    entries = set()
    for item in value:
        if not isinstance(item, str) or "@" not in item or item.strip().endswith("@"):
            raise PolicyConfigError(
                f"allowlist: {shown(item)} is neither an address (user@example.com) "
                "nor a domain (@example.com)"
            )
        entries.add(normalise_mailbox(item))
    return frozenset(entries)
