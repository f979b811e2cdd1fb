"""The trainer's model-family registry: npseg family name -> one `TorchFamily`.

A family is one file in this folder holding its torch module (built from the
same config dataclass as `npseg.models.<family>`), its loss, its extra
training targets and, where the authors publish one, the import of their
checkpoint; and one entry in TORCH_FAMILIES below. The training loop, the data
and the evaluation look families up here and never name one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

@dataclass(frozen=True)
class GoldenCase:
    """Outputs of the authors' own code that the torch module and npseg must reproduce."""

    variant: str  # the npseg variant the authors' weights are an instance of
    weights: str  # the authors' weights, relative to shared/upstream/ (.pth: read by import_upstream)
    npz: str  # the golden arrays, relative to shared/upstream/
    pairs: tuple[tuple[str, str], ...]  # (input key, output key): normalised [N,3,H,W] -> [N,K,H,W]
    tolerance: float  # largest absolute difference allowed
    probability: bool = False  # the golden output is a probability (sigmoid/softmax applied), not logits


def _no_targets(mask01: np.ndarray) -> dict:
    return {}


@dataclass(frozen=True)
class NoOptions:
    """The recipe options of a family without keys of its own."""


@dataclass(frozen=True)
class TorchFamily:
    """One network family on the trainer side.

    name             the npseg family name (`npseg.models.FAMILIES` key, weights files' architecture)
    build            cfg -> nn.Module; in eval mode forward(x [N,3,H,W] normalised) returns the logits
                     [N,K,H,W]; in train mode it returns whatever `loss` takes as `outputs`
    loss             (outputs, batch) -> the total loss, or (total, {part name: float}) to log its parts;
                     batch: "image" (normalised), "mask" [N,1,H,W] {0,1}, the family's `targets`,
                     "teacher" (the teacher's logits, when the recipe names one) and "options"
                     (the family's recipe options, an instance of `options`)
    targets          mask01 [H,W] uint8 -> {name: [H,W] array}: the family's extra per-sample targets,
                     made at the network size and augmented with the mask
    golden           the authors' outputs to reproduce (see GoldenCase)
    import_upstream  optional path -> nn.Module (eval mode) holding the authors' published checkpoint
    grow             optional (model, file_cfg, tensors) -> note: start `model` from a weights file of another
                     config of the family (raise ValueError when it cannot); the note goes to provenance
    options          a frozen dataclass of the family's own recipe keys (the recipe's [options] table)
    """

    name: str
    build: Callable[[Any], Any]
    loss: Callable[[Any, dict], Any]
    targets: Callable[[np.ndarray], dict] = _no_targets
    golden: tuple[GoldenCase, ...] = ()
    import_upstream: Callable[[Any], Any] | None = None
    grow: Callable[[Any, Any, dict], str] | None = None
    options: type = NoOptions


def _torch_families() -> dict[str, TorchFamily]:
    from . import ultraseg  # each family module defines FAMILY; add new ones here

    return {f.name: f for f in (ultraseg.FAMILY,)}


TORCH_FAMILIES: dict[str, TorchFamily] = _torch_families()


def torch_family(name: str) -> TorchFamily:
    """The trainer side of an npseg family; KeyError names the known ones."""
    if name not in TORCH_FAMILIES:
        raise KeyError(f"the trainer has no model family {name!r}; it knows {sorted(TORCH_FAMILIES)}")
    return TORCH_FAMILIES[name]
