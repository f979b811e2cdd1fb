"""Recipes: every hyper-parameter of a training run, as a typed record read from a TOML file.

`recipes/<name>.toml` holds the keys of `Recipe` (absent keys take its defaults)
and, in an `[options]` table, the model family's own keys. The checkpoint and the
exported weights file record the recipe's name and its full contents.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

SIZE = 256  # the paper's input side


class RecipeError(ValueError):
    """A recipe that cannot be run; the message (one line) names the key and what it must be."""


@dataclass(frozen=True)
class Recipe:
    """Every hyper-parameter of a run: what a recipe file holds, and what the weights file records."""

    model: str = "ultraseg-130k"  # a variant name of npseg.models
    data: tuple[str, ...] = ()  # dataset folders (images/ + masks/); several = mixed training
    size: int | tuple[int, int] = SIZE  # network input: a square side or (H, W), multiples of 16
    multiscale: tuple[int, int] | None = None  # (min, max): each train batch at a seeded side in it; validation at size
    epochs: int = 100  # the cosine schedule spans them
    batch_size: int = 4  # per process
    lr: float = 3e-4  # Adam
    patience: int = 10  # early stopping: epochs without validation-Dice gain
    seed: int = 0  # split (unless recorded), init, shuffling and augmentation
    max_minutes: float | None = None  # no epoch starts that the last one's duration says would cross it
    init: str | None = None  # weights file or bundled name to start from (its recorded splits are kept)
    init_sha256: str | None = None  # the tensors_sha256 the init file must have (a file name may be reused)
    splits_from: tuple[str, ...] = ()  # split files or weights files whose provenance records splits
    augmentation: str = "recipe"  # trainer.data.AUGMENTATIONS
    normalize: str = "family"  # the input normalisation: the family's, or "per-image" (NORMALIZATIONS)
    paste_small: float = 0.0  # probability of a small pasted polyp per train sample
    balanced: int = 0  # samples each epoch draws from every dataset (the smaller repeated); 0: each sample once
    select_on: str | None = None  # select (and stop) on this dataset's validation Dice alone
    teacher: str | None = None  # weights file whose outputs (TorchFamily.teach) the loss receives
    output_prior: float | None = None  # a fresh model's output layer starts neutral: weights 0, bias logit(p)
    options: dict = field(default_factory=dict)  # the family's own keys (TorchFamily.options)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


NORMALIZATIONS = ("family", "per-image")


def input_preprocessing(recipe: Recipe, family_preprocessing: dict) -> dict:
    """The npseg preprocessing record a run trains with and its weights file records: the family's,
    or with `normalize = "per-image"` each channel standardised over the frame, which takes a
    camera's colour cast, gain and exposure out of the input (npseg.preprocessing.standardize)."""
    from npseg.preprocessing import standardize

    if recipe.normalize == "family":
        return dict(family_preprocessing)
    return standardize(color_order=family_preprocessing["color_order"])


# key -> (check, what the value must be); types are checked first from the annotations
_BOUNDS = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: 0 <= v < 1, "a learning rate in [0, 1)"),
    "patience": (lambda v: v >= 1, "at least 1"),
    "max_minutes": (lambda v: v is None or v >= 0, "a non-negative number of minutes"),
    "paste_small": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "output_prior": (lambda v: v is None or 0 < v < 1, "a probability in (0, 1)"),
    "balanced": (lambda v: v >= 0, "a non-negative number of samples per dataset and epoch"),
    "size": (lambda v: all(s > 0 and s % 16 == 0 for s in ((v,) if isinstance(v, int) else v)),
             "a positive multiple of 16, or two as [H, W], e.g. 320 or [288, 448]"),
    "normalize": (lambda v: v in NORMALIZATIONS, f"one of {NORMALIZATIONS}"),
    "multiscale": (lambda v: v is None or (0 < v[0] <= v[1] and v[0] % 32 == 0 and v[1] % 32 == 0),
                   "two multiples of 32 as [min, max], min <= max, e.g. [160, 256]"),
}


def _converted(kind, value) -> tuple[bool, object]:
    """(True, value as `kind`) when it is one (TOML lists become tuples), else (False, value)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(((True, v) for ok, v in (_converted(k, value) for k in args) if ok), (False, value))
    if typing.get_origin(kind) is tuple:
        fixed = args[-1] is not Ellipsis
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
            return False, value
        items = [_converted(args[0], v) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return number, float(value) if number else value
    if kind is type(None):
        return value is None, value
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool)), value


_TYPE_TEXT = {"int": "an integer", "float": "a number", "str": "a string", "dict": "a table", "NoneType": "absent"}


def _type_text(kind) -> str:
    if typing.get_origin(kind) is tuple:
        return "a list of " + _type_text(typing.get_args(kind)[0]).split(" ", 1)[1] + "s"
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_type_text(k) for k in typing.get_args(kind))
    return _TYPE_TEXT[kind.__name__]


def recipe_from_dict(d: dict, base: Recipe | None = None) -> Recipe:
    """`base` (default: Recipe()) with the keys of `d` replaced, each checked; RecipeError names an
    unknown key or a bad value."""
    if not isinstance(d, dict):
        raise RecipeError(f"a recipe is a table of keys, got {type(d).__name__}")
    hints = typing.get_type_hints(Recipe)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise RecipeError(f"unknown recipe key(s) {unknown}; known: {sorted(hints)}")
    values = {}
    for key, value in d.items():
        ok, value = _converted(hints[key], value)
        if not ok:
            raise RecipeError(f"recipe key {key!r} is {value!r}, expected {_type_text(hints[key])}")
        check, what = _BOUNDS.get(key, (lambda v: True, ""))
        if not check(value):
            raise RecipeError(f"recipe key {key!r} is {value!r}, expected {what}")
        values[key] = value
    return dataclasses.replace(base or Recipe(), **values)


def read_recipe(path) -> Recipe:
    """The recipe of a TOML file; RecipeError (one line, naming the file) when it cannot be used."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except OSError as e:
        raise RecipeError(f"{path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    try:
        return recipe_from_dict(d)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


@dataclass(frozen=True)
class TrainOptions:
    """A run: its recipe, and where and how fast it runs (none of which changes what it learns)."""

    recipe: Recipe = field(default_factory=Recipe)
    recipe_name: str | None = None  # the recipe file's stem; None: the defaults and command-line keys
    overridden: tuple[str, ...] = ()  # the recipe file's keys that the command line changed
    out: str = "runs/ultraseg-130k"  # the run folder
    device: str = "cpu"  # cpu or cuda[:i]
    threads: int = 1  # torch CPU threads per process
    workers: int = 0  # data loader worker processes
    cache_dir: str = "cache"  # resized samples
    skip_bad: bool = False  # skip corrupt or unpaired files with a warning
    limit: int | None = None  # first N train stems per dataset (N/4 val and test): smoke runs only
