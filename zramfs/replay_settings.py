"""The settings a trace can be replayed under: their names, parsers and recorded values.

Owns `SETTINGS` (every name `zramfs replay --set NAME=V` and `replay_trace(config=...)`
accept, each with the parser of its value text), `validate_setting` (one-line
`InvalidSetting`, EINVAL, for an unknown name or a bad value) and `parse_config`, and
`recorded_config`: the values a trace was recorded with, from its header.

A setting is anything a mount takes that a replay can change (docs/trace-format.md,
"Replay"): the codec (`algorithm`, what comp_algorithm stores; `level`, algorithm_params'
level), the allocator (`chain_size`, `chain_rule`: zsmalloc's pages per zspage and the rule
choosing them), the limit (`mem_limit`) and background compaction (`compact_policy`,
`compact_interval`).  disksize comes from the trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from allocator.sizeclass import CHAIN_RULES

from . import codecs
from .errors import InvalidSetting, ZramError
from .kparse import kstrtouint, memparse

#: zsmalloc's CONFIG_ZSMALLOC_CHAIN_SIZE range (mm/Kconfig: "range 4 16"); a mount takes 4 or 8
CHAIN_SIZE_RANGE = (4, 16)
#: compact_policy's extra value in a replay: run the live daemon's compactions where the trace
#: has them, and no policy of its own
RECORDED_POLICY = "recorded"


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    parse: Callable[[str], Any]


def _algorithm(text: str) -> str:
    if text not in codecs.AVAILABLE:
        raise ValueError(f"unknown algorithm (one of {', '.join(codecs.AVAILABLE)})")
    return text


def _level(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError("not an integer") from None


def _chain_size(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise ValueError("not an integer") from None
    lo, hi = CHAIN_SIZE_RANGE
    if not lo <= n <= hi:
        raise ValueError(f"must be {lo}..{hi} (zsmalloc's chain size range)")
    return n


def _chain_rule(text: str) -> str:
    if text not in CHAIN_RULES:
        raise ValueError(f"one of {', '.join(CHAIN_RULES)}")
    return text


def _compact_policy(text: str) -> str:
    if text == RECORDED_POLICY:
        return text
    from .daemon import BadPolicy, format_policy, parse_policy

    try:
        return format_policy(parse_policy(text))
    except BadPolicy as exc:
        raise ValueError(f"{exc.strerror}; or {RECORDED_POLICY}") from None


def _compact_interval(text: str) -> int:
    try:
        return kstrtouint(text, 0)
    except ZramError:
        raise ValueError("milliseconds, an unsigned 32-bit integer") from None


def _mem_limit(text: str) -> int:
    value, consumed = memparse(text)
    if consumed == 0 or consumed != len(text):
        raise ValueError("a size: bytes with an optional K, M, G suffix (0: no limit)")
    return value


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "algorithm",
            "comp_algorithm of the device (every comp_algorithm store of the trace is replaced)",
            _algorithm,
        ),
        Setting("level", "algorithm_params level of the primary algorithm", _level),
        Setting(
            "chain_size",
            "zsmalloc pages per zspage, 4..16 (4 = Linux 5.17, 8 = current)",
            _chain_size,
        ),
        Setting(
            "chain_rule", "how a size class picks its chain: max-used or min-waste", _chain_rule
        ),
        Setting(
            "mem_limit", "mem_limit of the device, held for the whole replay (0: none)", _mem_limit
        ),
        Setting(
            "compact_policy",
            "off, shrinker, threshold:PAGES, interval:MS (run against trace "
            f"time) or {RECORDED_POLICY} (the live daemon's own compactions)",
            _compact_policy,
        ),
        Setting(
            "compact_interval",
            "the compaction daemon's timer in ms, in trace time",
            _compact_interval,
        ),
    )
}


def validate_setting(name: str, value: str) -> Any:
    """Check one NAME=VALUE; returns the parsed value, raises `InvalidSetting` (one line)."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise InvalidSetting(f"unknown setting {name!r} (known: {', '.join(SETTINGS)})")
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise InvalidSetting(f"{name}={value!r}: {exc}") from None


def parse_config(config: Mapping[str, str]) -> dict[str, Any]:
    """Every NAME=VALUE of `config`, checked and parsed (the first bad one raises)."""
    if not isinstance(config, Mapping):
        raise InvalidSetting("the configuration must map setting names to value text")
    out: dict[str, Any] = {}
    for name, value in config.items():
        if not isinstance(value, str):
            raise InvalidSetting(f"{name}: the value must be text, not {type(value).__name__}")
        out[name] = validate_setting(name, value)
    return out


def recorded_config(mount: Mapping[str, Any]) -> dict[str, str]:
    """The mount-wide settings a trace header records, as setting text (algorithm,
    level and mem_limit are the trace's own stores: see zramfs.replay)."""
    out = {
        "chain_size": str(mount.get("chain_size", 4)),
        "chain_rule": str(mount.get("chain_rule", "max-used")),
        "compact_policy": str(mount.get("compact_policy", "shrinker")),
        "compact_interval": str(mount.get("compact_interval", 1000)),
    }
    return out
