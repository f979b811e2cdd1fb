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


def _logits_of(teacher, image):
    return teacher(image)


@dataclass(frozen=True)
class NoOptions:
    """The recipe options of a family without keys of its own."""


@dataclass(frozen=True)
class TorchFamily:
    """One network family on the trainer side.

    name             the npseg family name (`npseg.models.FAMILIES` key, weights files' architecture)
    build            cfg -> nn.Module that keeps cfg as `.cfg`; in eval mode forward(x [N,3,H,W] normalised)
                     returns the logits [N,K,H,W]; in train mode whatever `loss` takes as `outputs`
    loss             (outputs, batch) -> the total loss, or (total, {part name: float}) to log its parts;
                     batch: "image" (normalised), "mask" [N,1,H,W] {0,1}, the family's `targets`,
                     "teacher" (what `teach` returns, when the recipe names a teacher) and "options"
                     (the family's recipe options, an instance of `options`)
    targets          mask01 [H,W] uint8 -> {name: [H,W] array}: the family's extra per-sample targets,
                     made at the network size and augmented with the mask
    golden           the authors' outputs to reproduce (see GoldenCase)
    import_upstream  optional path -> nn.Module (eval mode) holding the authors' published checkpoint
    grow             optional (model, file_cfg, tensors) -> note: start `model` from a weights file of another
                     config of the family (raise ValueError when it cannot); the note goes to provenance
    options          a frozen dataclass of the family's own recipe keys (the recipe's [options] table)
    teach            (teacher module, its normalised image) -> batch["teacher"], when the recipe names a
                     teacher (default: the teacher's logits); e.g. its logits and encoder features
    output_layer     optional module -> its layer that makes the logits (a conv or linear layer with a bias;
                     the recipe's output_prior starts it neutral)
    """

    name: str
    build: Callable[[Any], Any]
    loss: Callable[[Any, dict], Any]
    targets: Callable[[np.ndarray], dict] = _no_targets
    golden: tuple[GoldenCase, ...] = ()
    import_upstream: Callable[[Any], Any] | None = None
    grow: Callable[[Any, Any, dict], str] | None = None
    options: type = NoOptions
    teach: Callable[[Any, Any], Any] = _logits_of
    output_layer: Callable[[Any], Any] | None = None


def _torch_families() -> dict[str, TorchFamily]:
    # each family module defines FAMILY; add new ones here
    from . import aulunet, malunet, microaunet, ultralightunet, ultraseg

    return {f.name: f for f in (ultraseg.FAMILY, ultralightunet.FAMILY, microaunet.FAMILY, malunet.FAMILY,
                                aulunet.FAMILY)}


TORCH_FAMILIES: dict[str, TorchFamily] = _torch_families()


def torch_family(name: str) -> TorchFamily:
    """The trainer side of an npseg family; KeyError names the known ones."""
    if name not in TORCH_FAMILIES:
        raise KeyError(f"the trainer has no model family {name!r}; it knows {sorted(TORCH_FAMILIES)}")
    return TORCH_FAMILIES[name]


# ---------------------------------------------------------------- weights files <-> torch modules

def _torch_family_of(cfg) -> TorchFamily:
    from npseg.weights import family_of

    return torch_family(family_of(cfg).name)


def load_tensors(model, tensors: dict) -> None:
    """Load a weights file's tensors into `model`, all of them and nothing else (BatchNorm's step
    counters are not exported); ValueError names what does not fit."""
    import torch

    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"tensors do not fit the {model.cfg.name} module: missing {missing}, "
                         f"unexpected {unexpected}")


def torch_model_from_weights(path_or_name):
    """The torch module (eval mode) holding an npseg weights file's tensors, and the file's record."""
    from npseg import weights as weights_file
    from npseg.segmenter import resolve_weights

    w = weights_file.load(resolve_weights(path_or_name))
    model = _torch_family_of(w.config).build(w.config)
    try:
        load_tensors(model, w.tensors)
    except ValueError as e:
        raise ValueError(f"{path_or_name}: {e}") from None
    return model.eval(), w


def init_from_weights(model, path_or_name: str) -> dict:
    """Start `model` from an npseg weights file: the same config, or one the family can grow from
    (TorchFamily.grow); returns what provenance records of the start. RecipeError when it cannot."""
    import torch
    from npseg import weights as weights_file
    from npseg.segmenter import resolve_weights

    from ..recipe import RecipeError

    path = resolve_weights(path_or_name)
    w = weights_file.load(path)
    grow = _torch_family_of(model.cfg).grow
    info = {"file": path.name, "tensors_sha256": weights_file.tensors_checksum(w.tensors),
            "datasets": sorted(w.provenance.get("datasets", {})), "epochs_run": w.provenance.get("epochs_run"),
            "init": w.provenance.get("init")}
    if w.config == model.cfg:
        try:
            load_tensors(model, w.tensors)
        except ValueError as e:
            raise RecipeError(f"--init {path}: {e}") from None
        return info
    try:
        if grow is None:
            raise ValueError("its family grows no model from another")
        info["grown_from"] = grow(model, w.config, {k: torch.from_numpy(np.array(v)) for k, v in w.tensors.items()})
    except ValueError as e:
        raise RecipeError(f"--init {path}: its model is {w.config.name}, not the {model.cfg.name} being trained "
                         f"({e}); pass --model {w.config.name} or other weights") from None
    return info
