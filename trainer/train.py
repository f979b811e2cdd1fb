"""The training loop: deep-supervision recipe, early stopping on validation Dice, resumable.

Single process by default; under `torchrun` (WORLD_SIZE > 1) it trains with
DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 validates, logs and
writes checkpoints, and the others follow its decisions.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from . import data as D
from .loss import ultraseg_loss
from .evaluate import dice_iou
from .model import EDB_RES_SCALE, UltraSeg, build

CHECKPOINT_FORMAT = "npseg-trainer-checkpoint-1"
LOG_FIELDS = ["epoch", "lr", "train_loss", "train_main", "train_region", "train_boundary", "val_dice",
              "val_dice_per_dataset", "best_val_dice", "epoch_seconds", "train_seconds"]


@dataclass
class TrainOptions:
    variant: str = "ultraseg-130k"
    data: list[str] = field(default_factory=list)
    run_dir: str = "runs/ultraseg-130k"
    epochs: int = 100
    batch_size: int = 4
    lr: float = 3e-4
    patience: int = 10
    seed: int = 0
    max_minutes: float | None = None
    device: str = "cpu"
    threads: int = 1
    cache_dir: str = "cache"
    skip_bad: bool = False
    limit: int | None = None  # first N train stems per dataset (N/4 val and test): smoke runs only
    workers: int = 0
    init: str | None = None  # npseg weights file (or bundled name) to start from instead of a random init
    augmentation: str = "recipe"  # data.AUGMENTATIONS: the paper's flips + rotation, or "strong"
    size: int | list[int] = D.SIZE  # network input: square side (the paper's 256) or [H, W]; the file records it
    empty_dice_area: float | None = None  # loss.soft_dice_loss's empty_area; None = the recipe
    train_grown_only: bool = False  # with a 108K --init growing a 130K: train only AGF, SSA, EDB scales
    select_on: str | None = None  # dataset name: select on its validation Dice alone; None = the mean over datasets
    splits_from: list[str] = field(default_factory=list)  # split JSON files or weights files recording splits
    repeat_small: list | None = None  # [area fraction, times]: small-polyp and polyp-free samples repeated per epoch
    paste_small: float = 0.0  # probability of a small pasted polyp per train sample (data.paste_small_polyp)
    freeze_bn: bool = False  # with --init: BatchNorm keeps (and normalises with) the loaded running statistics
    lovasz: float = 0.0  # weight of the Lovász hinge added to the main loss (loss.lovasz_hinge); 0 = the recipe
    ema: float | None = None  # decay of a moving average of weights and BN statistics, validated and saved as the model
    sam: float = 0.0  # sharpness-aware steps: radius of the weight perturbation (sharpness_aware_gradients); 0 = off


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _log(msg: str, rank: int = 0) -> None:
    if rank == 0:
        print(msg, flush=True)


def resolve_splits(opts: TrainOptions, split_files: list[Path | None], progress: bool = True) -> dict:
    """Each dataset's split: the one recorded in its split file (a resumed run), in a packed copy, in
    --init or --splits-from (their test images stay out of training), else a new one from the seed."""
    names = [D.dataset_name(r) for r in opts.data]
    if len(set(names)) != len(names):
        raise D.DataError(f"dataset folders must have distinct names, got {names}")
    # the --init and --splits-from files are read only while some dataset has no recorded split, so a
    # resume never needs them
    fresh = [name for name, f in zip(names, split_files) if f is None or not f.exists()]
    init_prov = _provenance_of(opts.init) if opts.init and fresh else {}
    inherited = _recorded_splits(init_prov, opts.splits_from if fresh else [], fresh)
    ancestors = _ancestor_datasets(init_prov)
    splits = {}
    for root, name, split_file in zip(opts.data, names, split_files):
        if name in fresh and name not in inherited and name in ancestors:
            raise D.DataError(
                f"{name}: --init {opts.init} descends from {ancestors[name]}, which trained on {name}, but records "
                f"no split for it, so a new split (seed {opts.seed}) could put images the starting model trained on "
                f"into this run's test part; pass the split it was trained with: --splits-from a weights file that "
                f"records it (e.g. one trained on {name} alone) or a split file {name}.json (runs/<run>/splits/)")
        split = D.load_or_make_split(root, opts.seed, split_file, skip_bad=opts.skip_bad, limit=opts.limit,
                                     inherited=inherited.get(name))
        if progress and name in inherited and split["test"] == inherited[name]["test"]:
            _log(f"{name}: the recorded split (from --init or --splits-from; its test images stay out of training)")
        splits[name] = split
    return splits


def packed_copies(opts: TrainOptions) -> dict[str, dict]:
    """The run's packed copies by dataset name (their pack records); a copy packed at another size than
    the run's is an error, since resizing it again would train on twice-resized frames."""
    found = {}
    for root in opts.data:
        info = D.pack_info(root)
        if info is None:
            continue
        if tuple(info["size"]) != D.size_hw(opts.size):
            height, width = info["size"]
            raise D.DataError(f"{root}: a copy packed at {height}x{width}; train it with --size "
                              f"{D.size_text(info['size'])}, or pack {info['source']} again at this run's size")
        found[D.dataset_name(root)] = {k: info[k] for k in ("source", "size", "jpeg_quality")}
    return found


def prepare_data(opts: TrainOptions, run_dir: Path, progress: bool = True):
    """Splits (recorded in run_dir/splits/) and the cached train/val arrays of every dataset."""
    if not opts.data:
        raise D.DataError("no dataset given: pass --data FOLDER (a folder with images/ and masks/), one or more")
    D.check_size(opts.size)
    names = [D.dataset_name(r) for r in opts.data]
    splits = resolve_splits(opts, [run_dir / "splits" / f"{name}.json" for name in names], progress)
    train_parts, val_parts = [], []
    for root, name in zip(opts.data, names):
        split = splits[name]
        train_parts.append(D.cached_arrays(root, split["train"], opts.cache_dir, opts.skip_bad, progress, opts.size))
        val_parts.append(D.cached_arrays(root, split["val"], opts.cache_dir, opts.skip_bad, progress, opts.size))
    return names, splits, train_parts, val_parts


@torch.no_grad()
def validate(model: UltraSeg, parts, names, device, batch_size: int = 8) -> tuple[float, dict[str, float]]:
    """Mean per-image Dice (argmax at the training size) per dataset, and their mean: the selection metric,
    so that each dataset counts equally in a mixed run."""
    model.eval()
    per_dataset = {}
    for name, (stems, images, masks, _) in zip(names, parts):
        scores = []
        for s in range(0, len(stems), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size]).transpose(0, 3, 1, 2)
                                 .astype(np.float32) * np.float32(1.0 / 255.0)).to(device)
            pred = model(x, side_outputs=False).argmax(1).cpu().numpy().astype(np.uint8)
            scores += [dice_iou(p, m)[0] for p, m in zip(pred, masks[s:s + batch_size])]
        per_dataset[name] = float(np.mean(scores))
    model.train()
    return float(np.mean(list(per_dataset.values()))), per_dataset


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill during the save never leaves a truncated checkpoint


def _provenance_of(path_or_name: str) -> dict:
    """The provenance a weights file (or bundled model name) records (npseg checks the file as it loads)."""
    from npseg import weights as weights_file
    from npseg.segmenter import resolve_weights

    return weights_file.load(resolve_weights(path_or_name)).provenance


def _ancestor_datasets(provenance: dict) -> dict[str, str]:
    """Datasets that files earlier in an --init file's chain trained on -> the nearest such file's name."""
    found, link = {}, provenance.get("init")
    while isinstance(link, dict):
        for name in link.get("datasets") or []:
            found.setdefault(name, link.get("file", "?"))
        link = link.get("init")
    return found


def _recorded_splits(init_provenance: dict, sources: list[str], names: list[str]) -> dict:
    """The splits to reuse per dataset: those the --init file records, and those of --splits-from
    (split JSON files named <dataset>.json, or weights files and bundled names whose provenance records
    splits). Two sources that disagree about a dataset of the run are an error, not a silent pick."""
    found = {name: (split, "--init") for name, split in (init_provenance.get("splits") or {}).items()}
    for src in sources:
        if Path(src).suffix == ".json":
            given = {Path(src).stem: D.read_split_file(src)}
        else:
            try:
                given = _provenance_of(src).get("splits") or {}
            except (OSError, ValueError) as e:  # npseg's WeightsError is a ValueError naming the problem
                raise D.DataError(f"--splits-from {src}: {e}") from None
        if not set(given) & set(names):  # a source that splits none of the run's datasets is a mistake
            raise D.DataError(f"--splits-from {src}: it records splits for {sorted(given) or 'no dataset'}, "
                              f"none of this run's {names}")
        for name, split in given.items():
            if name in names and name in found and sorted(found[name][0]["test"]) != sorted(split["test"]):
                raise D.DataError(f"{name}: {found[name][1]} and --splits-from {src} record different test parts; "
                                  "keep the one the starting model was trained with")
            found.setdefault(name, (split, f"--splits-from {src}"))
    return {name: split for name, (split, _) in found.items()}


# A file of the fusion-less variant (108K) may start the fusion variant of the same widths (130K): the
# 130K graph computes the 108K function when AGF passes t4 through and SSA's alpha is 0 (here to 0.25 %:
# see below), so the larger model starts from everything the smaller one learned, not from a random init.
AGF_PASS_THROUGH_LOGIT = 3.0  # AGF softmax weights (0.0025, 0.9975): t4 almost alone, f3 still gets gradient


def _grows_into(file_cfg, model_cfg) -> bool:
    return (not file_cfg.fusion and model_cfg.fusion and file_cfg.widths == model_cfg.widths
            and file_cfg.out_ch == model_cfg.out_ch and file_cfg.gsa_grid == model_cfg.gsa_grid)


def _grown_tensors(cfg) -> set[str]:
    """State-dict keys of a fusion variant that its fusion-less twin (the 108K for the 130K) lacks."""
    twin = dataclasses.replace(cfg, fusion=False, learned_res_scale=False)
    return set(build(cfg).state_dict()) - set(build(twin).state_dict())


def _train_grown_only(model: UltraSeg) -> list[torch.nn.Module]:
    """Freeze every tensor a grown model took from its 108K file; returns the frozen BatchNorm layers,
    which the loop keeps in eval mode so that their running statistics stay as loaded too."""
    grown = _grown_tensors(model.cfg)
    for name, param in model.named_parameters():
        param.requires_grad_(name in grown)
    return [m for m in model.modules()
            if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.requires_grad]


@torch.no_grad()
def _pass_through_fusion(model: UltraSeg) -> None:
    """Set the AGF + SSA tensors (absent from a 108K file) so that they leave the 108K function unchanged."""
    head = model.multiscale_fusion.spatial_attention[-1]  # Conv1x1 -> the two AGF logits (f3, t4)
    head.weight.zero_()
    head.bias.copy_(torch.tensor([-AGF_PASS_THROUGH_LOGIT, AGF_PASS_THROUGH_LOGIT]))
    model.attention_alpha.zero_()  # z = B
    for block in model.encoder3[1:]:
        block.res_weight.fill_(EDB_RES_SCALE)  # the 108K's constant


def init_from_weights(model: UltraSeg, path_or_name: str) -> dict:
    """Load an npseg weights file into `model` (same variant, or a 108K file into a 130K model: see
    _grows_into); returns what provenance records of it."""
    from npseg import weights as weights_file
    from npseg.segmenter import resolve_weights

    path = resolve_weights(path_or_name)
    w = weights_file.load(path)
    grown = _grows_into(w.config, model.cfg)
    if w.config != model.cfg and not grown:
        raise ValueError(f"--init {path}: its model is {w.config.name} with config {w.config.to_dict()}, "
                         f"not the {model.cfg.name} being trained; pass --variant {w.config.name} or other weights")
    state = {k: torch.from_numpy(v) for k, v in w.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # BN step counters are not exported
    if grown:
        grown_keys = _grown_tensors(model.cfg)
        missing = [k for k in missing if k not in grown_keys]
        _pass_through_fusion(model)
    if missing or unexpected:
        raise ValueError(f"--init {path}: missing tensors {missing}, unexpected tensors {unexpected}")
    prov = w.provenance
    info = {"file": path.name, "tensors_sha256": weights_file.tensors_checksum(w.tensors),
            "datasets": sorted(prov.get("datasets", {})), "epochs_run": prov.get("epochs_run"),
            "init": prov.get("init")}
    if grown:
        info["grown_from"] = (f"{w.config.name}: its tensors loaded as they are, AGF set to pass t4 through "
                              f"(softmax logits -{AGF_PASS_THROUGH_LOGIT:g}/+{AGF_PASS_THROUGH_LOGIT:g}), "
                              "SSA alpha 0, EDB residual scales 0.1")
    return info


def load_checkpoint(path) -> dict:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a trainer checkpoint (format {CHECKPOINT_FORMAT}); "
                         "pass a best.pt or last.pt written by `python -m trainer train`")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> UltraSeg:
    from npseg.config import UltraSegConfig

    model = build(UltraSegConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def _append_log(run_dir: Path, row: dict) -> None:
    csv_path = run_dir / "log.csv"
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in row.items()})


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing from base_lr (epoch 1) towards 0 over `epochs` epochs."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))


def train_loader(train_set: D.PolypDataset, opts: TrainOptions, world: int = 1, rank: int = 0):
    """The shuffled, per-rank loader and its sampler. Workers are not persistent: a persistent
    worker keeps the dataset copy it started with, so it would never see `set_epoch` and would
    repeat epoch 1's augmentation for every epoch."""
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=opts.seed)
    loader = DataLoader(train_set, batch_size=opts.batch_size, sampler=sampler, num_workers=opts.workers,
                        persistent_workers=False)
    return loader, sampler


RESUME_OVERRIDABLE = ("epochs", "patience")


def train(opts: TrainOptions, resume: bool = False, resume_overrides=()) -> dict:
    """Train; returns the final state summary (rank 0). Writes run_dir/{options.json, splits/,
    log.csv, log.json, last.pt, best.pt}."""
    rank, world, local_rank = _dist_info()
    run_dir = Path(opts.run_dir)
    ckpt = None
    if resume:
        last = run_dir / "last.pt"
        if not last.exists():
            raise FileNotFoundError(f"{last}: nothing to resume; start the run without --resume")
        ckpt = load_checkpoint(last)
        saved = TrainOptions(**ckpt["options"])
        # what may change on resume: where and how fast it runs, the time budget, and (when given)
        # the epoch count and the patience (the cosine schedule is a function of (epoch, epochs),
        # so it re-spans a new count; a longer schedule warrants a longer patience)
        unknown = set(resume_overrides) - set(RESUME_OVERRIDABLE)
        if unknown:
            raise ValueError(f"on resume only {RESUME_OVERRIDABLE} can change, not {sorted(unknown)}")
        opts = dataclasses.replace(saved, device=opts.device, threads=opts.threads, max_minutes=opts.max_minutes,
                                   workers=opts.workers, run_dir=opts.run_dir, cache_dir=opts.cache_dir,
                                   **{k: getattr(opts, k) for k in resume_overrides})
    if opts.select_on is not None and opts.select_on not in (names := [D.dataset_name(r) for r in opts.data]):
        raise D.DataError(f"--select-on {opts.select_on}: not a dataset of this run (have {names}); "
                          "name one of them, or drop --select-on to select on their mean")
    distributed = world > 1
    if opts.device.startswith("cuda"):
        device = torch.device(f"cuda:{local_rank}" if distributed else opts.device)
        if distributed:
            torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(opts.threads)

    packed = packed_copies(opts)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "options.json").write_text(json.dumps(dataclasses.asdict(opts), indent=1))
        names, splits, train_parts, val_parts = prepare_data(opts, run_dir)
    if distributed:
        dist.barrier()  # rank 0 wrote the splits and the cache; the others read them
    if rank != 0:
        names, splits, train_parts, val_parts = prepare_data(opts, run_dir, progress=False)

    torch.manual_seed(opts.seed)
    model = build(opts.variant)
    init_info = None
    if ckpt is None and opts.init:
        init_info = init_from_weights(model, opts.init)
        _log(f"initialised from {init_info['file']} (trained on {', '.join(init_info['datasets']) or 'unknown data'}, "
             f"{init_info['epochs_run']} epochs)", rank)
    elif ckpt is not None:
        init_info = ckpt.get("init")
    frozen_norms = []
    if opts.train_grown_only:
        if not (init_info and "grown_from" in init_info):
            raise ValueError("--train-grown-only trains only what a grown model added: pass --variant ultraseg-130k "
                             "with --init a 108K weights file, or drop --train-grown-only")
        frozen_norms = _train_grown_only(model)
    if opts.freeze_bn:
        if init_info is None:
            raise ValueError("--freeze-bn keeps the running statistics of a trained model: pass --init a weights "
                             "file, or drop --freeze-bn (a random init has no statistics to keep)")
        # a grown model's AGF BatchNorm starts with default statistics, not loaded ones: those keep learning
        grown = _grown_tensors(model.cfg) if "grown_from" in init_info else set()
        frozen_norms = [m for name, m in model.named_modules()
                        if isinstance(m, torch.nn.BatchNorm2d) and f"{name}.running_mean" not in grown]
    # channels-last makes torch's CPU depthwise/grouped convs about 1.5x faster here (measured, 1 thread)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=opts.lr)
    state = {"epoch": 0, "best_val_dice": -1.0, "best_epoch": 0, "epochs_since_best": 0, "train_seconds": 0.0,
             "history": []}
    # with --ema the checkpoint's "model" is the average (what is validated and exported) and
    # "train_model" the weights the optimizer steps
    if ckpt is not None:
        model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        state = {k: ckpt[k] for k in state}
        torch.set_rng_state(ckpt["torch_rng"])
        _log(f"resumed {run_dir / 'last.pt'} after epoch {state['epoch']} "
             f"(best val Dice {state['best_val_dice']:.4f} at epoch {state['best_epoch']})", rank)
    average = None
    if opts.ema is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(opts.ema), use_buffers=True)
        if ckpt is not None:
            average.module.load_state_dict(ckpt["model"])
            average.n_averaged.fill_(ckpt["ema_updates"])
    selected = model if average is None else average.module
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    train_set = D.PolypDataset(train_parts, seed=opts.seed, augmentation=opts.augmentation,
                               repeat_small=opts.repeat_small, paste_small=opts.paste_small)
    loader, sampler = train_loader(train_set, opts, world, rank)
    _log(f"{opts.variant}: {len(train_set)} train / {sum(len(p[0]) for p in val_parts)} val samples from "
         f"{', '.join(names)}; {world} process(es) on {device}, batch {opts.batch_size} per process, "
         f"epochs {state['epoch'] + 1}..{opts.epochs}", rank)

    from tqdm import tqdm

    stop_reason = "epochs done"
    last_epoch_seconds = 0.0
    while state["epoch"] < opts.epochs:
        budget_left = None if opts.max_minutes is None else opts.max_minutes * 60 - state["train_seconds"]
        stop = budget_left is not None and budget_left < last_epoch_seconds
        if _agree(stop, distributed, device):
            stop_reason = f"time budget ({opts.max_minutes} min) would be exceeded by another epoch"
            break
        epoch = state["epoch"] + 1
        t0 = time.time()
        lr = cosine_lr(opts.lr, epoch, opts.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        net.train()
        for norm in frozen_norms:
            norm.eval()
        sums = {"loss": 0.0, "main": 0.0, "region": 0.0, "boundary": 0.0}
        n = 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{opts.epochs}", disable=rank != 0, file=sys.stderr,
                   mininterval=1 if sys.stderr.isatty() else 60, dynamic_ncols=True)
        for x, mask, bound in bar:
            x, mask, bound = x.to(device, memory_format=memory_format), mask.to(device), bound.to(device)
            def batch_loss():
                return ultraseg_loss(*net(x), mask, bound, opts.empty_dice_area, opts.lovasz)

            loss, parts = batch_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.sam:
                sharpness_aware_gradients(model, opts.sam, lambda: batch_loss()[0])
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            sums["loss"] += float(loss.detach()) * len(x)
            for k, v in parts.items():
                sums[k] += v * len(x)
            n += len(x)
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", refresh=False)
        means = _mean_over_ranks(sums, n, distributed, device)

        improved = False
        if rank == 0:
            val_dice, val_per = validate(selected, val_parts, names, device)
            if opts.select_on is not None:
                val_dice = val_per[opts.select_on]
            improved = val_dice > state["best_val_dice"]
        epoch_seconds = time.time() - t0
        last_epoch_seconds = epoch_seconds
        state["epoch"] = epoch
        state["train_seconds"] += epoch_seconds
        if rank == 0:
            if improved:
                state.update(best_val_dice=val_dice, best_epoch=epoch, epochs_since_best=0)
            else:
                state["epochs_since_best"] += 1
            row = {"epoch": epoch, "lr": lr, "train_loss": means["loss"], "train_main": means["main"],
                   "train_region": means["region"], "train_boundary": means["boundary"], "val_dice": val_dice,
                   "val_dice_per_dataset": val_per, "best_val_dice": state["best_val_dice"],
                   "epoch_seconds": round(epoch_seconds, 1), "train_seconds": round(state["train_seconds"], 1)}
            state["history"].append(row)
            ck = {"format": CHECKPOINT_FORMAT, "config": model.cfg.to_dict(), "options": dataclasses.asdict(opts),
                  "splits": splits, "init": init_info, "datasets": [str(Path(r).resolve()) for r in opts.data],
                  "packed": packed,
                  "model": selected.state_dict(), "optimizer": optimizer.state_dict(),
                  "lr_schedule": {"kind": "cosine", "base_lr": opts.lr, "epochs": opts.epochs}, "torch_rng": torch.get_rng_state(), **state}
            if average is not None:
                ck.update(train_model=model.state_dict(), ema_updates=int(average.n_averaged))
            if improved:
                _save_atomic(ck, run_dir / "best.pt")
            _save_atomic(ck, run_dir / "last.pt")
            _append_log(run_dir, row)
            (run_dir / "log.json").write_text(json.dumps(state["history"], indent=1))
            _log(f"epoch {epoch}: loss {means['loss']:.4f} (main {means['main']:.4f}) val Dice {val_dice:.4f} "
                 f"{json.dumps({k: round(v, 4) for k, v in val_per.items()})} best {state['best_val_dice']:.4f}"
                 f"@{state['best_epoch']} lr {lr:.2e} {epoch_seconds:.0f}s", rank)
        if _agree(rank == 0 and state["epochs_since_best"] >= opts.patience, distributed, device):
            stop_reason = f"early stopping: no validation-Dice gain in {opts.patience} epochs"
            break
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    summary = {"stop_reason": stop_reason, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
               "best_val_dice": state["best_val_dice"], "train_seconds": round(state["train_seconds"], 1)}
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        _log(f"stopped: {stop_reason}; best val Dice {state['best_val_dice']:.4f} at epoch {state['best_epoch']}, "
             f"{state['epoch']} epochs, {state['train_seconds'] / 60:.1f} min", rank)
    return summary


def sharpness_aware_gradients(model: torch.nn.Module, rho: float, loss_fn) -> None:
    """SAM (Foret et al., ICLR 2021): replace the gradients in model (those of the loss at the weights
    w) by the gradients of loss_fn() at w + rho g / |g|, the norm taken over every trained tensor, and
    restore w. BatchNorm keeps the running mean and variance of the first pass (the perturbed pass is
    a probe); only its batch counter, unused at a fixed momentum, counts the probe too."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    weights = [p.detach().clone() for p in params]  # restored by copy: w + e - e is not w in floats
    with torch.no_grad():
        for p in params:
            p.add_(p.grad, alpha=float(rho / (norm + 1e-12)))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0  # running = (1 - 0) x running + 0 x batch: left as it was
        for p in params:
            p.grad = None
        loss_fn().backward()
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        with torch.no_grad():
            for p, w in zip(params, weights, strict=True):
                p.copy_(w)


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


def _size(opts: dict) -> tuple[int, int]:
    return D.size_hw(opts.get("size", D.SIZE))  # checkpoints written before --size trained at 256


def _lovasz_note(opts: dict) -> str:
    w = opts.get("lovasz") or 0.0
    return "" if w == 0 else f" + {w:g} Lovász hinge"


def _selection_note(opts: dict) -> str:
    name = opts.get("select_on")
    return "validation Dice" if name is None else f"{name}'s validation Dice alone"


# the options beyond the paper's recipe that the recipe line names after the loss, in its order:
# (option, its value when off, the clause for another value); checkpoints older than an option lack it
_OPTION_CLAUSES = (
    ("empty_dice_area", None, lambda area: f", Dice smooth {area:g} of the image on polyp-free samples"),
    ("train_grown_only", False, lambda _: ", only the tensors grown from the 108K trained"),
    ("repeat_small", None, lambda rep: f", samples with a polyp under {rep[0]:g} of the image (or none) "
                                       f"repeated {int(rep[1])}x per epoch"),
    ("paste_small", 0.0, lambda p: f", a polyp shrunk to {D.PASTE_AREA[0]:.1%}-{D.PASTE_AREA[1]:.0%} of the image "
                                   f"pasted into {p:g} of samples"),
    ("freeze_bn", False, lambda _: ", BatchNorm running statistics kept as loaded"),
    ("sam", 0.0, lambda rho: f", sharpness-aware steps (SAM, radius {rho:g})"),
    ("ema", None, lambda decay: f", a moving average of the weights (decay {decay:g} per step) validated and exported"),
)


def _option_notes(opts: dict) -> str:
    return "".join(clause(value) for key, off, clause in _OPTION_CLAUSES
                   if (value := opts.get(key)) is not None and value != off)


def checkpoint_provenance(ckpt: dict, ckpt_path) -> dict:
    """What a weights file records about its training: data, splits, recipe, seed, epochs, wall time."""
    opts = ckpt["options"]
    return {
        "source": "trained with `python -m trainer train` (npseg trainer)",
        "checkpoint": Path(ckpt_path).name,
        "variant": opts["variant"],
        "datasets": {D.dataset_name(r): r for r in ckpt["datasets"]},
        **({"packed_copies": ckpt["packed"]} if ckpt.get("packed") else {}),
        "hardware": f"{opts['device']}, {opts['threads']} torch thread(s) per process",
        "splits": ckpt["splits"],
        "split_sha256": {name: D.split_hash(s) for name, s in ckpt["splits"].items()},
        "split_sizes": {name: {k: len(v) for k, v in s.items()} for name, s in ckpt["splits"].items()},
        "split_rule": f"per dataset: seeded random {1 - D.TEST_FRACTION:.0%}/{D.TEST_FRACTION:.0%} train/test, "
                      f"validation = {D.VAL_FRACTION:.0%} of train (early stopping only)",
        "seed": opts["seed"],
        "init": ckpt.get("init") or "random (seeded)",
        "recipe": f"Adam lr {opts['lr']}, cosine over {opts['epochs']} epochs, batch {opts['batch_size']}, "
                  f"{'x'.join(map(str, _size(opts)))}, "
                  f"{D.AUGMENTATIONS[opts.get('augmentation', 'recipe')]}, CE + 2 Dice{_lovasz_note(opts)} main, 0.5 BCE + Dice side heads (0.1-0.4 region, "
                  f"0.1-0.3 boundary){_option_notes(opts)}, early stopping patience {opts['patience']} on "
                  f"{_selection_note(opts)}",
        "epochs_planned": opts["epochs"],
        "epochs_run": ckpt["epoch"],
        "best_epoch": ckpt["best_epoch"],
        "best_val_dice": round(float(ckpt["best_val_dice"]), 4),
        "train_minutes": round(float(ckpt["train_seconds"]) / 60, 1),
    }


def checkpoint_export_parts(ckpt_path) -> tuple[UltraSeg, dict, tuple[int, int]]:
    """A checkpoint's model, provenance and input size, read once (a live run may replace best.pt
    meanwhile). For a best.pt the epochs run and wall time come from the run's last.pt when it is beside it."""
    ckpt = load_checkpoint(ckpt_path)
    provenance = checkpoint_provenance(ckpt, ckpt_path)
    last = Path(ckpt_path).with_name("last.pt")
    if last.exists() and last.resolve() != Path(ckpt_path).resolve():
        run = load_checkpoint(last)
        provenance.update(epochs_run=max(run["epoch"], ckpt["epoch"]),
                          train_minutes=round(float(max(run["train_seconds"], ckpt["train_seconds"])) / 60, 1))
    return model_from_checkpoint(ckpt), provenance, _size(ckpt["options"])


def export_checkpoint(ckpt_path, out, metrics: dict | None = None) -> Path:
    """Write a checkpoint's model as an npseg weights file with its provenance."""
    from .export import export_weights

    model, provenance, input_size = checkpoint_export_parts(ckpt_path)
    return export_weights(model, out, provenance=provenance, metrics=metrics, input_size=input_size)
