"""The training loop: any registered model family, early stopping on validation Dice, resumable.

The recipe (`trainer.recipe.Recipe`) names the model variant; its family
(`trainer.models`) supplies the module, the loss and the extra targets, and npseg's
family record the input normalisation. Single process by default; under `torchrun`
(WORLD_SIZE > 1) it trains with DistributedDataParallel (gloo on CPU, nccl on
CUDA); rank 0 validates, logs and writes checkpoints, and the others follow its
decisions.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from . import data as D
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, options_from_checkpoint, save_atomic
from .evaluate import dice_iou
from .models import init_from_weights, torch_family, torch_model_from_weights
from .recipe import Recipe, RecipeError, TrainOptions, input_preprocessing
from .splits import packed_copies, prepare_data

# what `--overwrite` removes from a run folder before a new run starts there
RUN_FILES = ("options.json", "log.csv", "log.json", "last.pt", "best.pt", "summary.json", "splits")


class RunExistsError(ValueError):
    """A run folder that holds a run already; the message names the choices."""


RESUME_OVERRIDABLE = ("epochs", "patience", "max_minutes")


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _log(msg: str, rank: int = 0) -> None:
    if rank == 0:
        print(msg, flush=True)


def _resumed_options(opts: TrainOptions, resume_overrides) -> tuple[TrainOptions, dict]:
    """The run's saved options with this call's place, pace and time budget (and, when given, its
    epochs and patience: the cosine schedule is a function of (epoch, epochs), so it re-spans a new
    count, and a longer schedule warrants a longer patience); and the checkpoint."""
    last = Path(opts.out) / "last.pt"
    if not last.exists():
        raise FileNotFoundError(f"{last}: nothing to resume; start the run without --resume")
    unknown = set(resume_overrides) - set(RESUME_OVERRIDABLE)
    if unknown:
        raise ValueError(f"on resume only {RESUME_OVERRIDABLE} can change, not {sorted(unknown)}")
    ckpt = load_checkpoint(last)
    saved = options_from_checkpoint(ckpt)
    changed = {"max_minutes": opts.recipe.max_minutes, **{k: getattr(opts.recipe, k) for k in resume_overrides}}
    recipe = dataclasses.replace(saved.recipe, **changed)
    overridden = tuple(dict.fromkeys(saved.overridden + tuple(resume_overrides))) if saved.recipe_name else ()
    return dataclasses.replace(opts, recipe=recipe, recipe_name=saved.recipe_name, overridden=overridden), ckpt


def _clear_run_folder(run_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a run, unless `overwrite`: then its run files go first (a new run
    must not reuse their splits or append to their log)."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not overwrite:
        raise RunExistsError(f"{run_dir}: holds a run already ({', '.join(found)}); continue it with --resume, "
                             "start it again with --overwrite, or choose another --out")
    for name in found:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _device(opts: TrainOptions, distributed: bool, local_rank: int) -> torch.device:
    if not opts.device.startswith("cuda"):
        return torch.device("cpu")
    device = torch.device(f"cuda:{local_rank}" if distributed else opts.device)
    if distributed:
        torch.cuda.set_device(device)
    return device


def _check_recipe(recipe: Recipe, tfam) -> None:
    try:
        D.check_augmentation(recipe.augmentation)
    except ValueError as e:
        raise RecipeError(f"recipe key 'augmentation': {e}") from None
    names = [D.dataset_name(r) for r in recipe.data]
    if recipe.select_on is not None and recipe.select_on not in names:
        raise D.DataError(f"--select-on {recipe.select_on}: not a dataset of this run (have {names}); "
                          "name one of them, or drop --select-on to select on their mean")
    if recipe.multiscale is not None and len(set(D.size_hw(recipe.size))) != 1:
        raise RecipeError(f"recipe key 'multiscale' resizes batches to squares: give a square 'size', not "
                          f"{D.size_text(recipe.size)}")
    if recipe.output_prior is not None:
        why = f"the {tfam.name} family names no output layer" if tfam.output_layer is None else "drop it or 'init'"
        if tfam.output_layer is None or recipe.init:
            raise RecipeError(f"recipe key 'output_prior' starts a fresh model's output layer: {why}")
    try:
        tfam.options(**recipe.options)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"[options] {recipe.options} do not fit the {tfam.name} family's options: {e}") from None


def _family(recipe: Recipe):
    """(npseg family, trainer family, config) of the recipe's model, the recipe checked against them."""
    from npseg.models import variant

    try:
        fam, cfg = variant(recipe.model)
    except KeyError as e:
        raise RecipeError(f"recipe key 'model': {e.args[0]}") from None
    tfam = torch_family(fam.name)
    _check_recipe(recipe, tfam)
    return fam, tfam, cfg


def _model_and_init(opts: TrainOptions, tfam, cfg, ckpt: dict | None, rank: int):
    """The model (seeded init, or the --init file's tensors) and what provenance records of its start."""
    torch.manual_seed(opts.recipe.seed)
    model = tfam.build(cfg)
    if opts.recipe.output_prior is not None:  # every pixel's logit at the prior; a checkpoint below replaces it
        layer, p = tfam.output_layer(model), opts.recipe.output_prior
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(math.log(p / (1 - p)))
    if ckpt is not None:
        return model, ckpt.get("init")
    if not opts.recipe.init:
        return model, None
    info = init_from_weights(model, opts.recipe.init)
    if opts.recipe.init_sha256 not in (None, info["tensors_sha256"]):
        raise RecipeError(f"--init {opts.recipe.init}: its tensors_sha256 is {info['tensors_sha256']}, not the "
                          f"recipe's init_sha256 {opts.recipe.init_sha256}: another file of that name")
    _log(f"initialised from {info['file']} (trained on {', '.join(info['datasets']) or 'unknown data'}, "
         f"{info['epochs_run']} epochs)", rank)
    return model, info


def normalise(pixels: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """Images [N,3,H,W] float32, RGB pixels in 0..255, as the network input that an npseg
    preprocessing record describes (the same coefficients npseg applies to a frame)."""
    from npseg.preprocessing import PER_IMAGE_KINDS, affine_coefficients

    if preprocessing["color_order"] == "BGR":
        pixels = pixels.flip(1)
    if preprocessing["normalize"]["kind"] in PER_IMAGE_KINDS:  # each image's own statistics
        coefficients = [affine_coefficients(preprocessing, _image_statistics(p)) for p in pixels]
    else:
        coefficients = [affine_coefficients(preprocessing)] * len(pixels)
    scale, shift = (torch.from_numpy(np.stack(c))[:, :, None, None] for c in zip(*coefficients))
    return pixels * scale + shift


def _image_statistics(planes: torch.Tensor) -> dict:
    """npseg.preprocessing.image_statistics of one image [3, H, W], in float64."""
    flat = planes.detach().reshape(3, -1).double()
    return {"min": float(flat.min()), "max": float(flat.max()), "mean": flat.mean(1).numpy(),
            "std": flat.std(1, correction=0).numpy()}


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing from base_lr (epoch 1) towards 0 over `epochs` epochs."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))


def train_loader(train_set: D.PolypDataset, opts: TrainOptions, world: int = 1, rank: int = 0):
    """The shuffled, per-rank loader and its sampler. Workers are not persistent: a persistent
    worker keeps the dataset copy it started with, so it would never see `set_epoch` and would
    repeat epoch 1's augmentation for every epoch."""
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=opts.recipe.seed)
    loader = DataLoader(train_set, batch_size=opts.recipe.batch_size, sampler=sampler, num_workers=opts.workers,
                        persistent_workers=False)
    return loader, sampler


@torch.no_grad()
def validate(model, parts, names, device, preprocessing: dict, output: dict,
             batch_size: int = 8) -> tuple[float, dict[str, float]]:
    """Mean per-image Dice (the output record's decision at the training size) per dataset, and their
    mean: the selection metric, so that each dataset counts equally in a mixed run."""
    from npseg.preprocessing import polyp_mask

    model.eval()
    per_dataset = {}
    for name, (stems, images, masks, *_) in zip(names, parts):
        scores = []
        for s in range(0, len(stems), batch_size):
            pixels = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size]).transpose(0, 3, 1, 2)
                                      .astype(np.float32))
            logits = model(normalise(pixels, preprocessing).to(device)).cpu().numpy()
            pred = [polyp_mask(lo, output).astype(np.uint8) for lo in logits]
            scores += [dice_iou(p, m)[0] for p, m in zip(pred, masks[s:s + batch_size])]
        per_dataset[name] = float(np.mean(scores))
    model.train()
    return float(np.mean(list(per_dataset.values()))), per_dataset


class _Run:
    """One training run's state between epochs: model, optimizer, data, counters."""

    def __init__(self, opts: TrainOptions, ckpt: dict | None, family, rank: int, world: int, local_rank: int):
        self.opts, self.rank, self.distributed = opts, rank, world > 1
        self.family, self.tfam, cfg = family
        self.preprocessing = input_preprocessing(opts.recipe, self.family.preprocessing)
        self.device = _device(opts, self.distributed, local_rank)
        if self.distributed:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        torch.set_num_threads(opts.threads)
        self.run_dir = Path(opts.out)
        self.packed = packed_copies(opts)
        self._prepare_data(world)
        model, self.init_info = _model_and_init(opts, self.tfam, cfg, ckpt, rank)
        self.family_options = self.tfam.options(**opts.recipe.options)
        self.teacher = self._teacher()
        # channels-last makes torch's CPU depthwise/grouped convs about 1.5x faster here (measured, 1 thread)
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = model.to(device=self.device, memory_format=self.memory_format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opts.recipe.lr)
        self.state = {"epoch": 0, "best_val_dice": -1.0, "best_epoch": 0, "epochs_since_best": 0,
                      "train_seconds": 0.0, "history": []}
        if ckpt is not None:
            self._restore(ckpt)
        self.net = torch.nn.parallel.DistributedDataParallel(self.model) if self.distributed else self.model
        self.train_set = D.PolypDataset(self.train_parts, seed=opts.recipe.seed,
                                        augmentation=opts.recipe.augmentation, paste_small=opts.recipe.paste_small,
                                        balanced=opts.recipe.balanced, targets=self.tfam.targets)
        self.loader, self.sampler = train_loader(self.train_set, opts, world, rank)

    def _prepare_data(self, world: int) -> None:
        """Rank 0 writes the options, the splits and the cache; the other ranks then read them."""
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "options.json").write_text(json.dumps(_options_record(self.opts), indent=1))
            prepared = prepare_data(self.opts, self.run_dir)
        if self.distributed:
            dist.barrier()
        if self.rank != 0:
            prepared = prepare_data(self.opts, self.run_dir, progress=False)
        self.names, self.splits, self.train_parts, self.val_parts = prepared

    def _teacher(self):
        """(module, preprocessing record) of the recipe's teacher, or None."""
        if self.opts.recipe.teacher is None:
            return None
        teacher, weights = torch_model_from_weights(self.opts.recipe.teacher)
        return teacher.to(self.device), weights.preprocessing

    def _restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = {k: ckpt[k] for k in self.state}
        torch.set_rng_state(ckpt["torch_rng"])
        _log(f"resumed {self.run_dir / 'last.pt'} after epoch {self.state['epoch']} (best val Dice "
             f"{self.state['best_val_dice']:.4f} at epoch {self.state['best_epoch']})", self.rank)

    def batch(self, item: dict) -> dict:
        """A loader item (image: RGB pixels in 0..255) as the loss's batch: tensors on the device, the
        image normalised as the run's npseg record says, the teacher's logits, the family's options."""
        batch = {k: v.to(self.device) for k, v in item.items()}
        image = normalise(item["image"], self.preprocessing)
        batch["image"] = image.to(self.device, memory_format=self.memory_format)
        if self.teacher is not None:
            teacher, preprocessing = self.teacher
            with torch.no_grad():
                batch["teacher"] = self.tfam.teach(teacher, normalise(item["image"], preprocessing).to(self.device))
        batch["options"] = self.family_options
        return batch

    def train_epoch(self, epoch: int, lr: float) -> dict[str, float]:
        """One pass over the training set; the mean loss and its logged parts over every rank."""
        from tqdm import tqdm

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        recipe = self.opts.recipe
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.net.train()
        sums, n = {"loss": 0.0}, 0
        bar = tqdm(self.loader, desc=f"epoch {epoch}/{recipe.epochs}", disable=self.rank != 0,
                   file=sys.stderr, mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)
        sides = D.batch_sides(recipe.multiscale, recipe.seed, epoch) if recipe.multiscale else itertools.repeat(None)
        for item, side in zip(bar, sides):
            batch = self.batch(item if side is None else D.resized_batch(item, side, self.tfam.targets))
            loss = self.tfam.loss(self.net(batch["image"]), batch)
            loss, parts = loss if isinstance(loss, tuple) else (loss, {})
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            size = len(batch["image"])
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * size
            n += size
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", refresh=False)
        return _mean_over_ranks(sums, n, self.distributed, self.device)

    def end_epoch(self, epoch: int, lr: float, means: dict, t0: float) -> float:
        """Validate (rank 0), count the epoch, log it and write the checkpoints; the epoch's seconds."""
        if self.rank == 0:
            val_dice, val_per = validate(self.model, self.val_parts, self.names, self.device,
                                         self.preprocessing, self.family.output)
        seconds = time.time() - t0
        self.state["epoch"] = epoch
        self.state["train_seconds"] += seconds
        if self.rank != 0:
            return seconds
        selected = val_dice if self.opts.recipe.select_on is None else val_per[self.opts.recipe.select_on]
        improved = selected > self.state["best_val_dice"]
        if improved:
            self.state.update(best_val_dice=selected, best_epoch=epoch, epochs_since_best=0)
        else:
            self.state["epochs_since_best"] += 1
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in means.items()}, "val_dice": selected,
               "val_dice_per_dataset": val_per, "best_val_dice": self.state["best_val_dice"],
               "epoch_seconds": round(seconds, 1), "train_seconds": round(self.state["train_seconds"], 1)}
        self.state["history"].append(row)
        self._save(improved)
        _append_log(self.run_dir, row)
        (self.run_dir / "log.json").write_text(json.dumps(self.state["history"], indent=1))
        _log(f"epoch {epoch}: loss {means['loss']:.4f} val Dice {selected:.4f} "
             f"{json.dumps({k: round(v, 4) for k, v in val_per.items()})} best {self.state['best_val_dice']:.4f}"
             f"@{self.state['best_epoch']} lr {lr:.2e} {seconds:.0f}s")
        return seconds

    def _save(self, improved: bool) -> None:
        recipe = self.opts.recipe
        ckpt = {"format": CHECKPOINT_FORMAT, "architecture": self.family.name, "config": self.model.cfg.to_dict(),
                "options": _options_record(self.opts), "splits": self.splits, "init": self.init_info,
                "datasets": [str(Path(r).resolve()) for r in recipe.data], "packed": self.packed,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_schedule": {"kind": "cosine", "base_lr": recipe.lr, "epochs": recipe.epochs},
                "torch_rng": torch.get_rng_state(), **self.state}
        if improved:
            save_atomic(ckpt, self.run_dir / "best.pt")
        save_atomic(ckpt, self.run_dir / "last.pt")

    def should_stop(self, last_epoch_seconds: float) -> str | None:
        """Why no further epoch runs (rank 0 decides for every rank), or None."""
        recipe = self.opts.recipe
        if self.state["epoch"] >= recipe.epochs:
            return "epochs done"
        budget_left = None if recipe.max_minutes is None else recipe.max_minutes * 60 - self.state["train_seconds"]
        if _agree(budget_left is not None and budget_left < last_epoch_seconds, self.distributed, self.device):
            return f"time budget ({recipe.max_minutes:g} min) would be exceeded by another epoch"
        if _agree(self.rank == 0 and self.state["epochs_since_best"] >= recipe.patience, self.distributed,
                  self.device):
            return f"early stopping: no validation-Dice gain in {recipe.patience} epochs"
        return None


def train(opts: TrainOptions, resume: bool = False, resume_overrides=(), overwrite: bool = False) -> dict:
    """Train; returns the final state summary (rank 0). Writes opts.out/{options.json, splits/,
    log.csv, log.json, last.pt, best.pt, summary.json}."""
    rank, world, local_rank = _dist_info()
    ckpt = None
    if resume:
        opts, ckpt = _resumed_options(opts, resume_overrides)
    family = _family(opts.recipe)
    if not resume and rank == 0:
        _clear_run_folder(Path(opts.out), overwrite)
    run = _Run(opts, ckpt, family, rank, world, local_rank)
    _log(f"{opts.recipe.model}: {len(run.train_set)} train / {sum(len(p[0]) for p in run.val_parts)} val samples "
         f"from {', '.join(run.names)}; {world} process(es) on {run.device}, batch {opts.recipe.batch_size} per "
         f"process, epochs {run.state['epoch'] + 1}..{opts.recipe.epochs}", rank)
    last_epoch_seconds = 0.0
    while (stop_reason := run.should_stop(last_epoch_seconds)) is None:
        epoch = run.state["epoch"] + 1
        t0 = time.time()
        lr = cosine_lr(opts.recipe.lr, epoch, opts.recipe.epochs)
        means = run.train_epoch(epoch, lr)
        last_epoch_seconds = run.end_epoch(epoch, lr, means, t0)
    if run.distributed:
        dist.barrier()
        dist.destroy_process_group()
    state = run.state
    summary = {"stop_reason": stop_reason, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
               "best_val_dice": state["best_val_dice"], "train_seconds": round(state["train_seconds"], 1)}
    if rank == 0:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        _log(f"stopped: {stop_reason}; best val Dice {state['best_val_dice']:.4f} at epoch {state['best_epoch']}, "
             f"{state['epoch']} epochs, {state['train_seconds'] / 60:.1f} min")
    return summary


def _options_record(opts: TrainOptions) -> dict:
    return {**dataclasses.asdict(opts), "recipe": opts.recipe.to_dict()}


def _append_log(run_dir: Path, row: dict) -> None:
    csv_path = run_dir / "log.csv"
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()})


def _agree(flag: bool, distributed: bool, device) -> bool:
    """Rank 0's decision, shared with every rank."""
    if not distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def _mean_over_ranks(sums: dict, n: int, distributed: bool, device) -> dict:
    if distributed:
        t = torch.tensor([*sums.values(), float(n)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        vals = t.tolist()
        sums, n = dict(zip(sums, vals[:-1])), vals[-1]
    return {k: v / max(n, 1) for k, v in sums.items()}
