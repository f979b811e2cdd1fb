"""python -m trainer train|eval|export|pack|convert-upstream: see `python -m trainer SUBCOMMAND --help`.

Subcommands are registered in SUBCOMMANDS: (help, add_arguments, run) triples; adding
one is a function pair and a line there. Usage errors print one line and exit with 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  # reproduce a shipped weights file from its recipe (every hyper-parameter is in the file)
  python -m trainer train --recipe recipes/ultraseg-130k.toml --out runs/mix-130k
  # the same with one key changed (any recipe key has a flag; the run records the result)
  python -m trainer train --recipe recipes/ultraseg-130k.toml --out runs/mix-130k-lr --lr 1e-4
  # continue a killed run (loses at most the epoch in progress)
  python -m trainer train --out runs/mix-130k --resume
  # 2 processes with DistributedDataParallel (gloo on CPU, nccl with --device cuda)
  torchrun --nproc_per_node 2 -m trainer train --recipe recipes/ultraseg-130k.toml --out runs/ddp
  # test-split Dice/IoU/HD95 through npseg, torch as a cross-check
  python -m trainer eval weights/ultraseg-130k.safetensors --data ../shared/data/kvasir-seg ../shared/data/polypgen
  # a compact copy of the train and validation frames (no test frames), to train on a GPU machine
  python -m trainer pack --data ../shared/data/polypgen --size 320 --init ultraseg-130k -o packed
  python -m trainer train --recipe recipes/ultraseg-130k-polypgen.toml --data packed/polypgen --device cuda \\
      --workers 8 --out runs/gpu
  # export the best checkpoint, evaluated on the test splits, to an npseg weights file
  python -m trainer export runs/mix-130k/best.pt -o weights/ultraseg-130k.safetensors --evaluate
  # choose the decision threshold on the validation splits; the copy records it and its test metrics
  python -m trainer calibrate runs/mix-130k.safetensors --data ../shared/data/kvasir-seg ../shared/data/polypgen \\
      ../shared/data/cvc-clinicdb -o runs/mix-130k-calibrated.safetensors --evaluate
"""


class UsageError(ValueError):
    """A command line that cannot run; printed as one line, exit code 2."""


def _input_size(text: str) -> int | tuple[int, int]:
    """N or HxW (multiples of 16, as the recipe checks them); a square is kept as its side."""
    from .recipe import RecipeError, recipe_from_dict

    try:
        sides = [int(p) for p in text.lower().split("x")]
        size = sides[0] if len(sides) == 1 or sides[0] == sides[1] else tuple(sides)
        return recipe_from_dict({"size": size}).size
    except (ValueError, IndexError, RecipeError):
        raise argparse.ArgumentTypeError(f"{text!r}: give N or HxW, multiples of 16 (e.g. 320 or 288x448)") from None


def _jpeg_quality(text: str) -> int:
    if text.isdigit() and 50 <= int(text) <= 100:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole JPEG quality in 50-100, e.g. 95")


# recipe key -> (flag, argparse keywords); each flag overrides that one key of the recipe
_RECIPE_FLAGS = {
    "model": ("--model", {"help": "model variant, e.g. ultraseg-130k (npseg.models)"}),
    "data": ("--data", {"nargs": "+", "metavar": "FOLDER",
                        "help": "dataset folder(s) with images/ and masks/; several = mixed training"}),
    "size": ("--size", {"type": _input_size, "metavar": "SIDE|HxW",
                        "help": "network input size, multiples of 16: a square side or HxW, e.g. 288x448"}),
    "multiscale": ("--multiscale", {"type": int, "nargs": 2, "metavar": ("MIN", "MAX"),
                                    "help": "train each batch at a seeded square side in MIN..MAX, multiples of 32 "
                                            "(validation stays at --size)"}),
    "epochs": ("--epochs", {"type": int, "help": "epochs; the cosine schedule spans them"}),
    "batch_size": ("--batch-size", {"type": int, "help": "per process"}),
    "lr": ("--lr", {"type": float, "help": "Adam learning rate"}),
    "patience": ("--patience", {"type": int, "help": "early stopping: epochs without validation-Dice gain"}),
    "seed": ("--seed", {"type": int, "help": "split (unless recorded), init, shuffling and augmentation seed"}),
    "max_minutes": ("--max-minutes", {"type": float, "help": "time budget: no epoch starts that the last "
                                                             "epoch's duration says would cross it"}),
    "init": ("--init", {"metavar": "WEIGHTS", "help": "start from an npseg weights file or bundled name; a "
                                                      "dataset it records a split for keeps that split"}),
    "splits_from": ("--splits-from", {"nargs": "+", "metavar": "FILE",
                                      "help": "reuse recorded splits: split files or weights files"}),
    "augmentation": ("--augment", {"help": "recipe: the paper's hflip + rotation; strong: also vflip, zoom "
                                           "and colour jitter"}),
    "normalize": ("--normalize", {"choices": ["family", "per-image"],
                                  "help": "input normalisation: the family's, or each channel standardised over "
                                          "the frame (per-image)"}),
    "paste_small": ("--paste-small", {"type": float, "metavar": "P", "help": "probability of pasting a shrunk "
                                                                            "polyp into a train sample"}),
    "balanced": ("--balanced", {"type": int, "metavar": "N", "help": "each epoch draws N samples from every "
                                                                     "dataset (the smaller repeated); 0: each once"}),
    "select_on": ("--select-on", {"metavar": "DATASET", "help": "select the best checkpoint (and stop early) "
                                                                 "on this dataset's validation Dice alone"}),
    "output_prior": ("--output-prior", {"type": float, "metavar": "P",
                                        "help": "start the output layer neutral: weights 0, bias logit(P), P the "
                                                "polyp share of pixels"}),
    "teacher": ("--teacher", {"metavar": "WEIGHTS", "help": "a weights file whose logits the family's loss "
                                                            "receives (distillation)"}),
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, metavar="TOML",
                   help="the run's hyper-parameters (recipes/<name>.toml); a flag below overrides that one key; "
                        "without a recipe the defaults of trainer.recipe.Recipe apply")
    keys = p.add_argument_group("recipe keys (each overrides the recipe's value)")
    for key, (flag, kwargs) in _RECIPE_FLAGS.items():
        keys.add_argument(flag, dest=key, default=None, **kwargs)
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<recipe name or model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue DIR/last.pt with its own recipe (only --epochs, --patience and --max-minutes "
                        "may change)")
    p.add_argument("--overwrite", action="store_true", help="start again in a folder that holds a run")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--cache-dir", default="cache", help="cache of resized samples (default cache/)")
    p.add_argument("--limit", type=int, default=None, help="first N train stems per dataset: smoke runs only")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip corrupt images, missing masks and size mismatches with a warning instead of stopping")


def _train_options(args):
    """(TrainOptions, the recipe keys given as flags) from the command line."""
    from .recipe import Recipe, TrainOptions, read_recipe, recipe_from_dict

    given = {key: getattr(args, key) for key in _RECIPE_FLAGS if getattr(args, key) is not None}
    recipe = recipe_from_dict(given, read_recipe(args.recipe) if args.recipe else Recipe())
    name = Path(args.recipe).stem if args.recipe else None
    opts = TrainOptions(recipe=recipe, recipe_name=name, overridden=tuple(given) if name else (),
                        out=args.out or f"runs/{name or recipe.model}",
                        device=args.device, threads=args.threads, workers=args.workers, cache_dir=args.cache_dir,
                        skip_bad=args.skip_bad, limit=args.limit)
    return opts, tuple(given)


def run_train(args) -> int:
    opts, given = _train_options(args)
    from .train import train

    train(opts, resume=args.resume, resume_overrides=given, overwrite=args.overwrite)
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluate import PARTS

    p.add_argument("weights", help="npseg weights file (.safetensors) or bundled model name")
    p.add_argument("--data", nargs="+", required=True, metavar="FOLDER", help="dataset folder(s) to evaluate on")
    p.add_argument("--splits", nargs="*", default=None, metavar="JSON",
                   help="split files (runs/<run>/splits/<dataset>.json); default: the splits in the weights' "
                        "provenance")
    p.add_argument("--part", default="test", choices=list(PARTS),
                   help="split part (default test); all: every frame of each folder (leave-one-dataset-out); "
                        "pranet-test: CVC-ClinicDB's PraNet test frames")
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


def _refuse_same_path(source, output) -> None:
    if Path(output).resolve() == Path(source).resolve():
        raise UsageError(f"{output}: the output would overwrite its own input; write to another file")


def run_export(args) -> int:
    import json

    _refuse_same_path(args.checkpoint, args.output)
    from .checkpoint import checkpoint_export_parts
    from .export import export_weights

    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    # read once: the metrics belong to these tensors
    model, provenance, layout = checkpoint_export_parts(args.checkpoint)
    if args.note:
        provenance["note"] = args.note
    out = export_weights(model, args.output, provenance=provenance, metrics=metrics, **layout)
    if args.evaluate:
        import torch

        from .evaluate import evaluate

        torch.set_num_threads(args.threads)
        # a run on packed copies is evaluated on the folders they were packed from
        packed = provenance.get("packed_copies", {})
        data = args.data or [packed[n]["source"] if n in packed else r for n, r in provenance["datasets"].items()]
        metrics = evaluate(out, data, backend=args.backend)
        print(json.dumps(metrics, indent=1))
        export_weights(model, args.output, provenance=provenance, metrics=metrics, **layout)
    print(f"wrote {out}")
    return 0


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="npseg weights file (.safetensors) or bundled model name")
    p.add_argument("--data", nargs="+", required=True, metavar="FOLDER",
                   help="the dataset folders the file was trained on (their validation splits are scored)")
    p.add_argument("-o", "--output", required=True, help="weights file to write (.safetensors), a new file")
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate the written file on the test splits (through npseg) and store the metrics in it")
    p.add_argument("--limit", type=int, default=None, help="first N validation frames per dataset (quick checks)")


def run_calibrate(args) -> int:
    import json

    import npseg
    from npseg.weights import save

    from .calibrate import GRID, calibrated, choose, table, threshold_dice

    _refuse_same_path(args.weights, args.output)
    if Path(args.output).exists():
        raise UsageError(f"{args.output}: exists; write the calibrated file to a new path")
    seg = npseg.load(args.weights)
    per_dataset = threshold_dice(seg, args.data, limit=args.limit)
    chosen = choose(per_dataset)
    print(table(per_dataset, GRID, chosen))
    weights = calibrated(seg.weights, chosen, per_dataset)
    save(args.output, weights)
    if args.evaluate:
        from dataclasses import replace

        from .evaluate import evaluate

        metrics = evaluate(args.output, args.data)  # with the torch cross-check, as export --evaluate
        print(json.dumps(metrics, indent=1))
        save(args.output, replace(weights, metrics=metrics))
    previous = weights.provenance["decision_threshold"]["previous"]
    print(f"wrote {args.output}: decision threshold {chosen} (was {previous})")
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
                        f"{PACK_JPEG_QUALITY}: a mean error of 1 grey level; training on such a copy matched training "
                        "on the originals to 0.0004 validation Dice, while 90 lost up to 0.006)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or mismatched files with a warning")


def run_pack(args) -> int:
    from .data import DataError, check_size, pack_info, size_text, write_pack
    from .recipe import Recipe, TrainOptions
    from .splits import resolve_splits

    recipe = Recipe(data=tuple(args.data), seed=args.seed, init=args.init, splits_from=tuple(args.splits_from),
                    size=args.size)
    opts = TrainOptions(recipe=recipe, skip_bad=args.skip_bad)
    try:
        check_size(recipe.size)
        splits = resolve_splits(opts, [None] * len(recipe.data))
        total = 0
        for root, split in zip(recipe.data, splits.values()):
            dest, size = write_pack(root, split, args.output, recipe.size, args.quality, args.skip_bad)
            total += size
            split = pack_info(dest)["split"]  # what was written: --skip-bad may have left frames out
            print(f"{dest}: {len(split['train'])} train + {len(split['val'])} validation frames, "
                  f"{size / 2**20:.1f} MiB (its {len(split['test'])} test frames stay behind)")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"packed {total / 2**20:.1f} MiB; train on the copies with --data {args.output}/<dataset> --size "
          f"{size_text(recipe.size)}, and evaluate the result on the original folders")
    return 0


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pth", help="the published checkpoint, e.g. ../shared/upstream/best-ultraseg-130K.pth")
    p.add_argument("-o", "--output", required=True, help="the npseg weights file to write (.safetensors)")
    p.add_argument("--family", default=None,
                   help="the model family whose authors published it (default: the one family that imports one)")


def run_convert(args) -> int:
    import pickle

    if not Path(args.pth).is_file():
        raise UsageError(f"{args.pth}: no such checkpoint file")
    _refuse_same_path(args.pth, args.output)
    from .export import convert_upstream
    from .models import TORCH_FAMILIES

    importers = sorted(name for name, fam in TORCH_FAMILIES.items() if fam.import_upstream is not None)
    family = args.family or (importers[0] if len(importers) == 1 else None)
    if family not in importers:
        raise UsageError(f"--family {args.family}: choose one of {importers}, the families that import a checkpoint")
    try:
        out = convert_upstream(args.pth, args.output, TORCH_FAMILIES[family])
    except pickle.UnpicklingError:
        print(f"error: {args.pth}: not a plain PyTorch state_dict (it must load with torch.load(weights_only=True))",
              file=sys.stderr)
        return 1
    except (RuntimeError, ValueError, OSError) as e:  # foreign state_dict, or unwritable output
        print(f"error: {args.pth}: cannot convert: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


SUBCOMMANDS = {
    "train": ("train a model from a recipe (see examples below)", add_train_arguments, run_train),
    "eval": ("test-split Dice/IoU/HD95 through npseg, torch cross-check", add_eval_arguments, run_eval),
    "export": ("write a checkpoint as an npseg weights file", add_export_arguments, run_export),
    "calibrate": ("choose the decision threshold on the validation splits and write a copy of the weights "
                  "file that records it", add_calibrate_arguments, run_calibrate),
    "pack": ("write a compact copy of the train and validation frames, resized, to train elsewhere (e.g. on a "
             "rented GPU)", add_pack_arguments, run_pack),
    "convert-upstream": ("convert the authors' published checkpoint to an npseg weights file",
                         add_convert_arguments, run_convert),
}


def _usage_errors() -> tuple[type, ...]:
    """Errors that a command line causes and its user can fix: one line, exit code 2. Only modules
    already imported can have raised theirs (so a refusal needs no torch import)."""
    kinds = {"trainer.checkpoint": "CheckpointError", "trainer.data": "DataError", "trainer.recipe": "RecipeError",
             "trainer.train": "RunExistsError", "npseg.weights": "WeightsError"}
    return (UsageError, FileNotFoundError,
            *(getattr(sys.modules[module], name) for module, name in kinds.items() if module in sys.modules))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Train, evaluate and export npseg models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if argv[:1] == [name]:  # only the chosen one's: some defaults come from modules that import torch
            add_arguments(p)
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except _usage_errors() as e:
        print(f"error: {(str(e) or repr(e)).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
