"""The model-family registry: family name -> one `Family` holding everything npseg needs.

A family is one file in this folder (config dataclass + variant table, tensor
spec, exact load-time folds, readable NumPy reference forward, fast-plan
builder) and one name in the registry's NAMES below. Generic code (weights, engines,
segmenter, CLI) looks families up here and never names one.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable


@dataclass(frozen=True)
class Family:
    """One network family, as data and functions.

    name               the `architecture` field of its weights files
    config_type        a frozen dataclass with `name`, `to_dict()` and `from_dict(d)`
    variants           variant name -> config (e.g. "ultraseg-130k" -> UltraSegConfig(...))
    expected_tensors   cfg -> {tensor name: shape} of a weights file (the authors' names)
    fold               (cfg, tensors) -> params: the exact load-time folds (float32 in and out)
    reference_forward  (cfg, params, x) -> logits: the readable NumPy forward, x [3, H, W]
                       already normalised, float64; logits [out_channels, H, W]
    build_plan         (cfg, params, h, w) -> npseg.plan.Plan of Numba steps for one input size
    input_multiple     H and W must be multiples of it
    min_input          smallest H and W the graph runs at
    preprocessing      what new weights files of the family record (see npseg.preprocessing)
    output             {"activation": "softmax" | "sigmoid", "polyp_channel": k}
    runnable_problems  cfg -> list of reasons npseg cannot run it (empty: it can)
    out_channels       cfg -> number of logit channels
    """

    name: str
    config_type: type
    variants: Mapping[str, Any]
    expected_tensors: Callable[[Any], dict]
    fold: Callable[[Any, dict], dict]
    reference_forward: Callable[[Any, dict, Any], Any]
    build_plan: Callable[[Any, dict, int, int], Any]
    input_multiple: int
    preprocessing: dict
    output: dict
    out_channels: Callable[[Any], int]
    min_input: int = 0
    runnable_problems: Callable[[Any], list] = field(default=lambda cfg: [])

    def config(self, variant: str):
        """The config of a variant by name (KeyError names the known ones)."""
        if variant not in self.variants:
            raise KeyError(f"unknown {self.name} variant {variant!r}; known: {sorted(self.variants)}")
        return self.variants[variant]


class _Registry(Mapping):
    """Family name -> Family, importing a family's module on first use: a run imports only the
    family of the file it loads (each family module defines its kernels, ~10-40 ms of start-up)."""

    NAMES = ("ultraseg", "ultralightunet", "microaunet", "malunet", "aulunet")  # add new families here

    def __getitem__(self, name: str) -> Family:
        if name not in self.NAMES:
            raise KeyError(name)
        return import_module(f"{__name__}.{name}").FAMILY  # each family module defines FAMILY

    def __contains__(self, name) -> bool:  # without importing
        return name in self.NAMES

    def __iter__(self) -> Iterator[str]:
        return iter(self.NAMES)

    def __len__(self) -> int:
        return len(self.NAMES)

    def imported(self) -> list[Family]:
        """The families whose module is imported already (without importing the others)."""
        return [self[name] for name in self.NAMES if f"{__name__}.{name}" in sys.modules]


FAMILIES = _Registry()


def family(name: str) -> Family:
    """The family of an `architecture` name; KeyError names the known ones."""
    if name not in FAMILIES:
        raise KeyError(f"unknown architecture {name!r}; npseg knows {sorted(FAMILIES)}")
    return FAMILIES[name]


def variant(name: str) -> tuple[Family, Any]:
    """(family, config) of a variant name such as 'ultraseg-130k', from any family."""
    for fam in FAMILIES.values():
        if name in fam.variants:
            return fam, fam.variants[name]
    known = sorted(v for fam in FAMILIES.values() for v in fam.variants)
    raise KeyError(f"unknown model variant {name!r}; known: {known}")
