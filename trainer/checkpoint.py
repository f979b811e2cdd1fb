"""Trainer checkpoints: writing and reading them, and what a weights file exported from one records.

A checkpoint (runs/<run>/best.pt, last.pt) holds the model, the optimizer, the
run's options with its full recipe, its splits and its counters; it loads with
torch.load(weights_only=True). Checkpoints written before recipes were files
(format 1, flat options) still resume and export.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import data as D
from .recipe import Recipe, TrainOptions, input_preprocessing, recipe_from_dict
from .splits import train_size

CHECKPOINT_FORMAT = "npseg-trainer-checkpoint-2"
_FLAT_OPTIONS_FORMAT = "npseg-trainer-checkpoint-1"  # before recipes: one flat dict of options

# options of format-1 checkpoints that this trainer no longer has, with the value that meant "off"
_RETIRED_OPTIONS = {"empty_dice_area": None, "train_grown_only": False, "repeat_small": None,
                    "freeze_bn": False, "lovasz": 0.0, "ema": None, "sam": 0.0}
_RUN_FIELDS = ("device", "threads", "workers", "cache_dir", "skip_bad", "limit")


class CheckpointError(ValueError):
    """A file that is not a checkpoint this trainer can use; the message (one line) says why."""


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill during the save never leaves a truncated checkpoint


def load_checkpoint(path) -> dict:
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a best.pt or last.pt of a run folder")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not its own
        raise CheckpointError(f"{path}: not a trainer checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, _FLAT_OPTIONS_FORMAT):
        raise CheckpointError(f"{path}: not a trainer checkpoint (format {CHECKPOINT_FORMAT}); "
                              "pass a best.pt or last.pt written by `python -m trainer train`")
    return ckpt


def options_from_checkpoint(ckpt: dict) -> TrainOptions:
    """The run's options; a format-1 checkpoint's flat options are read into a recipe, and refused
    (one line) when they use an option this trainer no longer has."""
    saved = ckpt["options"]
    if ckpt["format"] == CHECKPOINT_FORMAT:
        return TrainOptions(recipe=recipe_from_dict(saved["recipe"]), recipe_name=saved["recipe_name"],
                            overridden=tuple(saved.get("overridden", ())), out=saved["out"],
                            **{k: saved[k] for k in _RUN_FIELDS})
    used = {k: saved[k] for k, off in _RETIRED_OPTIONS.items() if saved.get(k, off) != off}
    if used:
        raise CheckpointError(f"this checkpoint was trained with options this trainer no longer has ({used}); "
                              "resume or export it with the trainer that wrote it")
    renamed = {("model" if k == "variant" else k): v for k, v in saved.items() if v is not None}
    recipe = {k: v for k, v in renamed.items() if k in Recipe.__dataclass_fields__}
    return TrainOptions(recipe=recipe_from_dict(recipe), out=saved["run_dir"],
                        **{k: saved[k] for k in _RUN_FIELDS if k in saved})


def model_from_checkpoint(ckpt: dict):
    from npseg.models import variant

    from .models import torch_family

    fam = variant(options_from_checkpoint(ckpt).recipe.model)[0]
    model = torch_family(fam.name).build(fam.config_type.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def _recipe_summary(recipe: Recipe, family: str) -> str:
    """The recipe in one line, for a reader of the weights file."""
    height, width = D.size_hw(recipe.size)
    paste = (f", a polyp shrunk to {D.PASTE_AREA[0]:.1%}-{D.PASTE_AREA[1]:.0%} of the image pasted into "
             f"{recipe.paste_small:g} of samples" if recipe.paste_small else "")
    paste += f", {recipe.balanced} samples of every dataset per epoch" if recipe.balanced else ""
    paste += (f", each batch resized to a seeded side in {recipe.multiscale[0]}-{recipe.multiscale[1]} (multiples "
              f"of 32) from samples cached at {train_size(recipe)}" if recipe.multiscale else "")
    teacher = f", distilled from {Path(recipe.teacher).name}" if recipe.teacher else ""
    normalization = ", each channel standardised over the frame" if recipe.normalize == "per-image" else ""
    prior = f", output layer started at the prior {recipe.output_prior:g}" if recipe.output_prior else ""
    selection = "validation Dice" if recipe.select_on is None else f"{recipe.select_on}'s validation Dice alone"
    return (f"Adam lr {recipe.lr:g}, cosine over {recipe.epochs} epochs, batch {recipe.batch_size}, "
            f"{height}x{width}, {D.describe_augmentation(recipe.augmentation)}, the {family} family's "
            f"loss{paste}{teacher}{normalization}{prior}, early stopping patience {recipe.patience} on {selection}")


def checkpoint_provenance(ckpt: dict, ckpt_path) -> dict:
    """What a weights file records about its training: data, splits, recipe, seed, epochs, wall time."""
    from npseg.models import variant

    opts = options_from_checkpoint(ckpt)
    recipe = opts.recipe
    return {
        "source": "trained with `python -m trainer train` (npseg trainer)",
        "checkpoint": Path(ckpt_path).name,
        "variant": recipe.model,
        "datasets": {D.dataset_name(r): r for r in ckpt["datasets"]},
        **({"packed_copies": ckpt["packed"]} if ckpt.get("packed") else {}),
        "hardware": f"{opts.device}, {opts.threads} torch thread(s) per process",
        "splits": ckpt["splits"],
        "split_sha256": {name: D.split_hash(s) for name, s in ckpt["splits"].items()},
        "split_sizes": {name: {k: len(v) for k, v in s.items()} for name, s in ckpt["splits"].items()},
        "split_rule": D.SPLIT_RULE,
        "seed": recipe.seed,
        "init": ckpt.get("init") or "random (seeded)",
        "recipe": {"name": opts.recipe_name, "overridden": list(opts.overridden), "settings": recipe.to_dict(),
                   "summary": _recipe_summary(recipe, variant(recipe.model)[0].name)},
        "epochs_planned": recipe.epochs,
        "epochs_run": ckpt["epoch"],
        "best_epoch": ckpt["best_epoch"],
        "best_val_dice": round(float(ckpt["best_val_dice"]), 4),
        "train_minutes": round(float(ckpt["train_seconds"]) / 60, 1),
    }


def checkpoint_export_parts(ckpt_path):
    """A checkpoint's model, provenance and input layout (`export_weights`' input_size and
    preprocessing), read once (a live run may replace best.pt meanwhile). For a best.pt the epochs
    run and wall time come from the run's last.pt when it is beside it."""
    from npseg.models import variant

    ckpt = load_checkpoint(ckpt_path)
    provenance = checkpoint_provenance(ckpt, ckpt_path)
    last = Path(ckpt_path).with_name("last.pt")
    if last.exists() and last.resolve() != Path(ckpt_path).resolve():
        run = load_checkpoint(last)
        provenance.update(epochs_run=max(run["epoch"], ckpt["epoch"]),
                          train_minutes=round(float(max(run["train_seconds"], ckpt["train_seconds"])) / 60, 1))
    model, recipe = model_from_checkpoint(ckpt), options_from_checkpoint(ckpt).recipe
    layout = {"input_size": D.size_hw(recipe.size),
              "preprocessing": input_preprocessing(recipe, variant(recipe.model)[0].preprocessing)}
    return model, provenance, layout


def export_checkpoint(ckpt_path, out, metrics: dict | None = None) -> Path:
    """Write a checkpoint's model as an npseg weights file with its provenance."""
    from .export import export_weights

    model, provenance, layout = checkpoint_export_parts(ckpt_path)
    return export_weights(model, out, provenance=provenance, metrics=metrics, **layout)
