"""Check a configuration object strictly: unknown keys refused with a did-you-mean, each value against its rule.

Every block this project reads itself goes through here (the model config, the GLUE
block, the PLD block, our optimizer's and LR schedule's params, the batch sizes, and
the DeepSpeed values ds_validation judges), so a mistake is one ConfigError naming the
file, the key path, the value as the file wrote it and what was expected, and the same
mistake reads the same wherever it is made.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the file and key."""


@dataclass(frozen=True)
class Rule:
    """What a value must be: a "number" or an "integer" (bool is neither) in a range, or a "bool"."""

    kind: str = "number"
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        ok = is_number(value) and math.isfinite(value) and (self.kind != "integer"
                                                            or isinstance(value, int))
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        return ok

    def expected(self) -> str:
        if self.kind == "bool":
            return "true or false"
        article = "an" if self.kind == "integer" else "a"
        if self.high is not None:
            return (f"{article} {self.kind} in {'(' if self.low_open else '['}{self.low}, "
                    f"{self.high}{')' if self.high_open else ']'}")
        if self.kind == "integer" and self.low == 1 or self.kind == "number" and self.low == 0 \
                and self.low_open:
            return f"a positive {self.kind}"
        if self.low is not None:
            return f"{article} {self.kind} {'>' if self.low_open else '>='} {self.low}"
        return f"a finite {self.kind}"


POSITIVE_INT = Rule("integer", low=1)
BOOL = Rule("bool")


def check_value(source: Optional[str], path: str, value: Any, rule: Rule) -> Any:
    """`value`, or ConfigError "<source>: <path> must be <expected>, got <value>" (no
    source prefix when source is None: the caller adds it)."""
    if rule.accepts(value):
        return value
    prefix = f"{source}: " if source is not None else ""
    raise ConfigError(f"{prefix}{path} must be {rule.expected()}, got {show(value)}")


def checked(values: Any, source: str, rules: Mapping[str, Optional[Rule]], path: str = "",
            required: Iterable[str] = (), what: Optional[str] = None,
            like: Optional[str] = None) -> dict:
    """A copy of `values` once checked: an object (`like`: an example for the message), no
    key outside `rules`, every `required` key present, and each value passing its rule
    (None: any value; its owner judges it). `path`: the object's key path in the file,
    prefixed to each key in messages; `what`: how messages name the object (default
    'path')."""
    what = what or f"'{path}'"
    if not isinstance(values, dict):
        example = f" like {like}" if like else ""
        raise ConfigError(f"{source}: {path or what} must be an object{example}, got {show(values)}")
    required = list(required)
    optional = sorted(set(rules) - set(required))
    takes = (f"it needs {required}" + (f" and optionally {optional}" if optional else "")
             if required else f"it takes {sorted(rules)}")
    unknown = [key for key in values if key not in rules]
    if unknown:
        raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{described_keys(unknown, rules)} in {what}; {takes}")
    missing = [key for key in required if key not in values]
    if missing:
        raise ConfigError(f"{source}: missing key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(repr, missing))} in {what}; {takes}")
    for key, value in values.items():
        if rules[key] is not None:
            check_value(source, f"{path}.{key}" if path else key, value, rules[key])
    return dict(values)


def described_keys(unknown: Iterable[str], known: Iterable[str]) -> str:
    """"'schedular' (did you mean 'scheduler'?), 'zzzz'": each unknown key with its likely meaning."""
    known = list(known)
    return ", ".join(f"{key!r}{did_you_mean(key, known)}" for key in unknown)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, compared without case; '' for none."""
    lowered = {c.lower(): c for c in sorted(candidates)}
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[match[0]]!r}?)" if match else ""


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show(value: Any) -> str:
    """A value as the file wrote it; a string is called one, since '1e-3' looks numeric."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)
