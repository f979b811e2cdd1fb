"""The base of every family's typed config: JSON round trip with checked types and bounds.

A family's config is a frozen dataclass deriving from ModelConfig whose fields are
str, bool, int, float or tuple[int, ...]; from_dict refuses unknown or missing
fields, wrong JSON types and absurd sizes with a one-line message.
"""
from __future__ import annotations

import dataclasses
import typing

MAX_WIDTH = 4096  # no variant is near it; bounds what a corrupt file can make npseg allocate


def _checked(name: str, kind, value):
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WIDTH
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e6
    elif kind is str:
        ok = isinstance(value, str) and 0 < len(value) <= 200
    elif typing.get_origin(kind) is tuple:
        ok = isinstance(value, (list, tuple)) and 0 < len(value) <= 16 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WIDTH for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - a family declared a field type this base does not handle
        raise TypeError(f"config field {name!r} has unsupported type {kind}")
    if not ok:
        expected = {bool: "a boolean", int: f"an integer in 1..{MAX_WIDTH}", float: "a number", str: "a short string"}
        raise ValueError(f"field {name!r} is {value!r}, expected "
                         f"{expected.get(kind, f'a list of integers in 1..{MAX_WIDTH}')}")
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; expected a subset of {sorted(fields)}")
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"config lacks field(s) {missing}")
        return cls(**{k: _checked(k, hints[k], v) for k, v in d.items()})
