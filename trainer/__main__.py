"""python -m trainer train|eval|export|pack — see `python -m trainer SUBCOMMAND --help`.

Subcommands are registered in SUBCOMMANDS: (add_arguments, run) pairs; adding
one is a function pair and a line there.
"""
from __future__ import annotations

import argparse
import sys

from .upstream import add_convert_arguments, run_convert

EXAMPLES = """examples:
  # the shipped mixed model (Kvasir-SEG + PolypGen train splits merged), one CPU thread
  python -m trainer train --variant ultraseg-130k --data ../shared/data/kvasir-seg ../shared/data/polypgen \\
      --run-dir runs/mix-130k --epochs 100 --max-minutes 600
  # continue a killed run (loses at most the epoch in progress)
  python -m trainer train --run-dir runs/mix-130k --resume
  # 2 processes with DistributedDataParallel (gloo on CPU, nccl with --device cuda)
  torchrun --nproc_per_node 2 -m trainer train --data ../shared/data/kvasir-seg --run-dir runs/ddp
  # test-split Dice/IoU/HD95 through npseg, torch as a cross-check
  python -m trainer eval weights/ultraseg-130k.safetensors --data ../shared/data/kvasir-seg ../shared/data/polypgen
  # a compact copy of the train and validation frames (no test frames), to train on a GPU machine
  python -m trainer pack --data ../shared/data/polypgen --size 320 --init ultraseg-130k -o packed
  python -m trainer train --data packed/polypgen --size 320 --device cuda --workers 8 --run-dir runs/gpu
  # export the best checkpoint, evaluated on the test splits, to an npseg weights file
  python -m trainer export runs/mix-130k/best.pt -o weights/ultraseg-130k.safetensors --evaluate
"""


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .data import AUGMENTATIONS
    from .train import TrainOptions

    d = TrainOptions()
    p.add_argument("--variant", default=d.variant, help=f"model variant (default {d.variant})")
    p.add_argument("--data", nargs="+", default=[], metavar="FOLDER",
                   help="dataset folder(s) with images/ and masks/; several = mixed training")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<variant>)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs; the cosine schedule spans them (default {d.epochs}; with --resume: "
                        "the run's own count unless given)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default 4)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default 3e-4)")
    p.add_argument("--patience", type=int, default=None,
                   help=f"early stopping: epochs without validation-Dice gain (default {d.patience}; with --resume: "
                        "the run's own unless given)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="split (unless --init records one for the dataset), init, shuffling and augmentation seed")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="training time budget: no epoch starts that the last epoch's duration says would cross it")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads per process (default 1)")
    p.add_argument("--workers", type=int, default=d.workers, help="data loader worker processes (default 0)")
    p.add_argument("--cache-dir", default=d.cache_dir, help="cache of resized samples (default cache/)")
    p.add_argument("--limit", type=int, default=None, help="first N train stems per dataset: smoke runs only")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip corrupt images, missing masks and size mismatches with a warning instead of stopping")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from an npseg weights file or bundled model name (fine-tuning) instead of a random "
                        "init; a dataset it was trained on keeps the split it records (its test images stay out); a 108K "
                        "file may start a 130K run (AGF and SSA start as a pass-through)")
    p.add_argument("--augment", default=d.augmentation, choices=list(AUGMENTATIONS),
                   help="recipe: the paper's hflip + rotation (default); strong: also vflip, zoom and colour jitter")
    p.add_argument("--size", type=_input_size, default=d.size, metavar="SIDE|HxW",
                   help=f"network input size, multiples of 16: a square side (default {d.size}, the paper's) or "
                        "HxW, e.g. 288x448 for wide video frames; the weights file records it and npseg predicts at it")
    p.add_argument("--empty-dice-area", type=_image_fraction, default=None, metavar="FRACTION",
                   help="soft-Dice smooth term on polyp-free samples as a fraction of the image (e.g. 0.01), "
                        "so that a false mark on a clean frame keeps a gradient; default: the recipe's 1 pixel")
    p.add_argument("--train-grown-only", action="store_true",
                   help="with --variant ultraseg-130k and a 108K --init: train only what growing added (AGF, SSA, "
                        "EDB residual scales); the 108K's tensors and BatchNorm statistics stay as loaded")
    p.add_argument("--select-on", default=None, metavar="DATASET",
                   help="a mixed run selects its best checkpoint (and stops early) on this dataset's validation "
                        "Dice alone, e.g. polypgen; default: the mean over the run's datasets")
    p.add_argument("--splits-from", nargs="+", default=[], metavar="FILE",
                   help="reuse recorded splits: split files (runs/<run>/splits/<dataset>.json) or weights files / "
                        "bundled names whose provenance records them; needed when --init descends from a file "
                        "trained on a dataset that --init itself records no split for")
    p.add_argument("--repeat-small", nargs=2, default=None, metavar=("AREA", "TIMES"),
                   help="train samples whose polyp covers under AREA of the image (polyp-free ones included) "
                        "appear TIMES times per epoch, e.g. 0.01 3; default: each once")
    p.add_argument("--paste-small", type=_probability, default=0.0, metavar="P",
                   help="copy-paste for small polyps: with probability P a train sample gets another sample's "
                        "polyp, shrunk to 0.1-1%% of the image, blended in on the mucosa (e.g. 0.5); default 0")
    p.add_argument("--freeze-bn", action="store_true",
                   help="with --init: BatchNorm layers normalise with the running statistics they were loaded "
                        "with and keep them (their scale and shift still train), instead of the noisy statistics "
                        "of batches of 4")
    p.add_argument("--lovasz", type=_non_negative, default=0.0, metavar="WEIGHT",
                   help="add WEIGHT x the Lovász hinge (a per-image surrogate of 1 - IoU) to the main output's "
                        "loss, e.g. 1; default 0, the recipe's CE + 2 Dice")
    p.add_argument("--ema", type=_decay, default=None, metavar="DECAY",
                   help="validate, select and export an exponential moving average of the weights and BatchNorm "
                        "statistics, updated after every step with this decay (e.g. 0.999); default: the weights "
                        "as trained")
    p.add_argument("--sam", type=_non_negative, default=0.0, metavar="RHO",
                   help="sharpness-aware steps: take each step's gradient at the weights moved by RHO along the "
                        "normalised gradient (about twice the time per step), e.g. 0.05; default 0, plain steps")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt with its saved options")


def _checked_float(text: str, ok, what: str) -> float:
    """A number for which ok(number) holds; otherwise an argparse error naming `what` it must be."""
    try:
        value = float(text)
        if ok(value):
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not {what}")


def _image_fraction(text: str) -> float:
    return _checked_float(text, lambda v: 0 < v <= 1, "a fraction of the image in (0, 1], e.g. 0.01")


def _probability(text: str) -> float:
    return _checked_float(text, lambda v: 0 <= v <= 1, "a probability in [0, 1], e.g. 0.5")


def _decay(text: str) -> float:
    return _checked_float(text, lambda v: 0 <= v < 1, "a decay in [0, 1), e.g. 0.999")


def _non_negative(text: str) -> float:
    return _checked_float(text, lambda v: 0 <= v < float("inf"), "a non-negative weight, e.g. 1")


def _jpeg_quality(text: str) -> int:
    value = _checked_float(text, lambda v: v == int(v) and 50 <= v <= 100, "a whole JPEG quality in 50-100, e.g. 95")
    return int(value)


def _input_size(text: str) -> int | list[int]:
    """npseg's own --size parser (N or HxW, multiples of 16); a square size is kept as its side, as
    runs before HxW recorded it."""
    from npseg.cli import _size

    height, width = _size(text)
    return height if height == width else [height, width]


def _repeat_small(pair: list[str] | None) -> list | None:
    if pair is None:
        return None
    area, times = pair
    try:
        if int(times) >= 2:
            return [_image_fraction(area), int(times)]
    except (ValueError, argparse.ArgumentTypeError):
        pass
    raise ValueError(f"--repeat-small {area} {times}: give an image fraction in (0, 1] and a whole number of "
                     "times >= 2, e.g. --repeat-small 0.01 3")


def run_train(args) -> int:
    from .data import DataError
    from .train import TrainOptions, train

    try:
        repeat_small = _repeat_small(args.repeat_small)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    opts = TrainOptions(variant=args.variant, data=args.data, run_dir=args.run_dir or f"runs/{args.variant}",
                        epochs=args.epochs or TrainOptions.epochs, batch_size=args.batch_size, lr=args.lr,
                        patience=TrainOptions.patience if args.patience is None else args.patience,
                        seed=args.seed, max_minutes=args.max_minutes, device=args.device, threads=args.threads,
                        cache_dir=args.cache_dir, skip_bad=args.skip_bad, limit=args.limit, workers=args.workers,
                        init=args.init, augmentation=args.augment, size=args.size,
                        empty_dice_area=args.empty_dice_area, train_grown_only=args.train_grown_only,
                        select_on=args.select_on, splits_from=args.splits_from, repeat_small=repeat_small,
                        paste_small=args.paste_small, freeze_bn=args.freeze_bn, lovasz=args.lovasz,
                        ema=args.ema, sam=args.sam)
    try:
        given = tuple(k for k in ("epochs", "patience") if getattr(args, k) is not None)
        train(opts, resume=args.resume, resume_overrides=given)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="npseg weights file (.safetensors) or bundled model name")
    p.add_argument("--data", nargs="+", required=True, metavar="FOLDER", help="dataset folder(s) to evaluate on")
    p.add_argument("--splits", nargs="*", default=None, metavar="JSON",
                   help="split files (runs/<run>/splits/<dataset>.json); default: the splits in the weights' provenance")
    p.add_argument("--part", default="test", choices=["test", "val", "train"], help="split part (default test)")
    p.add_argument("--backend", default=None, help="npseg backend (default: the fastest available)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch cross-check")
    p.add_argument("--limit", type=int, default=None, help="first N images per dataset (quick checks)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or mismatched files with a warning")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the cross-check (default 1)")
    p.add_argument("-o", "--output", default=None, help="write the results as JSON here")
    p.add_argument("--per-image", default=None, metavar="CSV", help="write per-image metrics here")


def _read_splits(files):
    from pathlib import Path

    from .data import read_split_file

    return {Path(f).stem: read_split_file(f) for f in files} if files else None


def run_eval(args) -> int:
    import json
    from pathlib import Path

    import torch

    from npseg.weights import WeightsError

    from .data import DataError
    from .evaluate import evaluate

    torch.set_num_threads(args.threads)
    try:
        res = evaluate(args.weights, args.data, splits=_read_splits(args.splits), part=args.part,
                       cross_check=not args.no_torch, backend=args.backend, skip_bad=args.skip_bad,
                       limit=args.limit, per_image_csv=args.per_image)
    except (DataError, WeightsError) as e:  # a message naming the file or split and the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="trainer checkpoint (runs/<run>/best.pt or last.pt)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate the exported file on the test splits (through npseg) and store the metrics in it")
    p.add_argument("--data", nargs="+", default=None, metavar="FOLDER",
                   help="dataset folders for --evaluate (default: the folders the run trained on)")
    p.add_argument("--metrics", default=None, metavar="JSON", help="store this `eval -o` result as the metrics")
    p.add_argument("--backend", default=None, help="npseg backend for --evaluate")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for --evaluate's cross-check")
    p.add_argument("--note", default=None,
                   help="free text kept in the file's provenance (e.g. where and on what copy of the data it trained)")


def run_export(args) -> int:
    import json
    from pathlib import Path

    from .export import export_weights
    from .train import checkpoint_export_parts

    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    # read once: the metrics belong to these tensors
    model, provenance, input_size = checkpoint_export_parts(args.checkpoint)
    if args.note:
        provenance["note"] = args.note
    out = export_weights(model, args.output, provenance=provenance, metrics=metrics, input_size=input_size)
    if args.evaluate:
        import torch

        from .evaluate import evaluate

        torch.set_num_threads(args.threads)
        # a run on packed copies is evaluated on the folders they were packed from
        packed = provenance.get("packed_copies", {})
        data = args.data or [packed[n]["source"] if n in packed else r for n, r in provenance["datasets"].items()]
        metrics = evaluate(out, data, backend=args.backend)
        print(json.dumps(metrics, indent=1))
        export_weights(model, args.output, provenance=provenance, metrics=metrics, input_size=input_size)
    print(f"wrote {out}")
    return 0


def add_pack_arguments(p: argparse.ArgumentParser) -> None:
    from .data import PACK_JPEG_QUALITY

    p.add_argument("--data", nargs="+", required=True, metavar="FOLDER",
                   help="dataset folder(s) with images/ and masks/, as for train")
    p.add_argument("-o", "--output", required=True, metavar="FOLDER",
                   help="where to write the copies, one sub-folder per dataset (e.g. packed)")
    p.add_argument("--size", type=_input_size, required=True, metavar="SIDE|HxW",
                   help="the training input size the copies are resized to; train them with the same --size")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="the run's --init: a dataset it records a split for keeps that split")
    p.add_argument("--splits-from", nargs="+", default=[], metavar="FILE", help="as for train")
    p.add_argument("--seed", type=int, default=0, help="split seed for a dataset with no recorded split (as for train)")
    p.add_argument("--quality", type=_jpeg_quality, default=PACK_JPEG_QUALITY, metavar="50-100",
                   help=f"JPEG quality of the packed images, colour at full resolution (default "
                        f"{PACK_JPEG_QUALITY}: a mean error of 1 grey level; training on such a copy matched training on the originals to 0.0004 "
                        "validation Dice, while 90 lost up to 0.006)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or mismatched files with a warning")


def run_pack(args) -> int:
    from .data import DataError, check_size, pack_info, size_text, write_pack
    from .train import TrainOptions, resolve_splits

    opts = TrainOptions(data=args.data, seed=args.seed, init=args.init, splits_from=args.splits_from,
                        skip_bad=args.skip_bad, size=args.size)
    try:
        check_size(opts.size)
        splits = resolve_splits(opts, [None] * len(opts.data))
        total = 0
        for root, split in zip(opts.data, splits.values()):
            dest, size = write_pack(root, split, args.output, opts.size, args.quality, args.skip_bad)
            total += size
            split = pack_info(dest)["split"]  # what was written: --skip-bad may have left frames out
            print(f"{dest}: {len(split['train'])} train + {len(split['val'])} validation frames, "
                  f"{size / 2**20:.1f} MiB (its {len(split['test'])} test frames stay behind)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packed {total / 2**20:.1f} MiB; train on the copies with --data {args.output}/<dataset> --size "
          f"{size_text(opts.size)}, and evaluate the result on the original folders")
    return 0


SUBCOMMANDS = {
    "train": ("train a model (see examples below)", add_train_arguments, run_train),
    "eval": ("test-split Dice/IoU/HD95 through npseg, torch cross-check", add_eval_arguments, run_eval),
    "export": ("write a checkpoint as an npseg weights file", add_export_arguments, run_export),
    "pack": ("write a compact copy of the train and validation frames, resized, to train elsewhere (e.g. on a "
             "rented GPU)", add_pack_arguments, run_pack),
    "convert-upstream": ("convert the authors' published .pth to an npseg weights file",
                         add_convert_arguments, run_convert),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train, evaluate and export UltraSeg.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
