"""Each dataset's split for a run, and its cached train and validation arrays.

A split comes from the run's own split file (a resumed run), a packed copy, the
--init or --splits-from files (their test images stay out of training), or is
made from the seed; see `trainer.data.load_or_make_split`.
"""
from __future__ import annotations

from pathlib import Path

from . import data as D


def _log(msg: str) -> None:
    print(msg, flush=True)


def resolve_splits(opts, split_files: list[Path | None], progress: bool = True) -> dict:
    """Each dataset's split: the one recorded in its split file (a resumed run), in a packed copy, in
    --init or --splits-from (their test images stay out of training), else a new one from the seed."""
    names = [D.dataset_name(r) for r in opts.recipe.data]
    if len(set(names)) != len(names):
        raise D.DataError(f"dataset folders must have distinct names, got {names}")
    # the --init and --splits-from files are read only while some dataset has no recorded split, so a
    # resume never needs them
    fresh = [name for name, f in zip(names, split_files) if f is None or not f.exists()]
    init_prov = _provenance_of(opts.recipe.init) if opts.recipe.init and fresh else {}
    inherited = _recorded_splits(init_prov, opts.recipe.splits_from if fresh else [], fresh)
    ancestors = _ancestor_datasets(init_prov)
    splits = {}
    for root, name, split_file in zip(opts.recipe.data, names, split_files):
        if name in fresh and name not in inherited and name in ancestors:
            raise D.DataError(
                f"{name}: --init {opts.recipe.init} descends from {ancestors[name]}, which trained on {name}, but "
                f"records no split for it, so a new split (seed {opts.recipe.seed}) could put images the starting "
                f"model trained on into this run's test part; pass the split it was trained with: --splits-from a "
                f"weights file that records it (e.g. one trained on {name} alone) or a split file {name}.json "
                "(runs/<run>/splits/)")
        split = D.load_or_make_split(root, opts.recipe.seed, split_file, skip_bad=opts.skip_bad, limit=opts.limit,
                                     inherited=inherited.get(name))
        if progress and name in inherited and split["test"] == inherited[name]["test"]:
            _log(f"{name}: the recorded split (from --init or --splits-from; its test images stay out of training)")
        splits[name] = split
    return splits


def packed_copies(opts) -> dict[str, dict]:
    """The run's packed copies by dataset name (their pack records); a copy packed at another size than
    the run's is an error, since resizing it again would train on twice-resized frames."""
    found = {}
    for root in opts.recipe.data:
        info = D.pack_info(root)
        if info is None:
            continue
        if tuple(info["size"]) != D.size_hw(opts.recipe.size):
            height, width = info["size"]
            raise D.DataError(f"{root}: a copy packed at {height}x{width}; train it with --size "
                              f"{D.size_text(info['size'])}, or pack {info['source']} again at this run's size")
        found[D.dataset_name(root)] = {k: info[k] for k in ("source", "size", "jpeg_quality")}
    return found


def train_size(recipe):
    """The side the training samples are cached at: multi-scale's upper side, so that no batch is an
    upsampled frame; the recipe's size otherwise (validation is always at size)."""
    return max(D.size_hw(recipe.size)[0], recipe.multiscale[1]) if recipe.multiscale else recipe.size


def prepare_data(opts, run_dir: Path, progress: bool = True):
    """Splits (recorded in run_dir/splits/) and the cached train/val arrays of every dataset."""
    if not opts.recipe.data:
        raise D.DataError("no dataset given: pass --data FOLDER (a folder with images/ and masks/), one or more")
    D.check_size(opts.recipe.size)
    names = [D.dataset_name(r) for r in opts.recipe.data]
    splits = resolve_splits(opts, [run_dir / "splits" / f"{name}.json" for name in names], progress)
    train_parts, val_parts = [], []
    sizes = {"train": train_size(opts.recipe), "val": opts.recipe.size}
    for root, name in zip(opts.recipe.data, names):
        split = splits[name]
        for part, parts in (("train", train_parts), ("val", val_parts)):
            parts.append(D.cached_arrays(root, split[part], opts.cache_dir, opts.skip_bad, progress, sizes[part]))
    return names, splits, train_parts, val_parts


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
