"""Datasets for training: folders of images/ + masks/, recorded splits, a cache of resized samples.

A dataset folder holds `images/<stem>.(jpg|png)` and `masks/<stem>.(jpg|png)`.
Masks may have any channel count; a pixel is polyp when its grey level is >= 128
(JPEG masks carry compression noise). Every split is a deterministic, seeded
function of the sorted stems and is written to JSON with the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from . import augment as A

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SIZE = 256
TEST_FRACTION = 0.2
VAL_FRACTION = 0.1  # of the train 80%: the part used for early stopping
CACHE_VERSION = "1"  # bump when the cached arrays change meaning


class DataError(ValueError):
    """A dataset file that cannot be trained on; the message names the file and the fix."""


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing folder; a dataset needs images/ and masks/ sub-folders with files "
                        "named by the same stem")
    found = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            if p.stem in found:
                raise DataError(f"{p}: two files share the stem {p.stem!r} ({found[p.stem].name}); keep one")
            found[p.stem] = p
    return found


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path


def list_pairs(root: str | os.PathLike, skip_bad: bool = False) -> list[Pair]:
    """The (image, mask) pairs of a dataset folder, sorted by stem. An image without a mask
    is an error (or skipped with a warning under `skip_bad`)."""
    root = Path(root)
    images = _files_by_stem(root / "images")
    masks = _files_by_stem(root / "masks")
    if not images:
        raise DataError(f"{root / 'images'}: no .jpg/.png images found")
    pairs = []
    for stem, img in images.items():
        if stem not in masks:
            _bad(f"{img}: no mask {root / 'masks' / stem}.(jpg|png); add the mask or remove the image", skip_bad)
            continue
        pairs.append(Pair(stem, img, masks[stem]))
    return pairs


def _bad(message: str, skip_bad: bool) -> None:
    if not skip_bad:
        raise DataError(message + " (or pass --skip-bad to skip such files with a warning)")
    warnings.warn("skipping " + message, stacklevel=3)


def _decode(path: Path, flags: int) -> np.ndarray | None:
    """cv2.imdecode of the file's bytes: unlike cv2.imread, any file name the system allows
    (bytes that are not UTF-8 included) opens."""
    try:
        return cv2.imdecode(np.fromfile(path, dtype=np.uint8), flags)
    except (OSError, cv2.error):
        return None


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 BGR; DataError when the file does not decode."""
    img = _decode(path, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise DataError(f"{path}: cannot decode the image (corrupt or not an image); replace or remove it")
    return img


def read_mask(path: Path) -> np.ndarray:
    """HxW uint8 {0,1}: grey level >= 128, whatever the channel count."""
    m = _decode(path, cv2.IMREAD_UNCHANGED)
    if m is None or m.size == 0:
        raise DataError(f"{path}: cannot decode the mask (corrupt or not an image); replace or remove it")
    if m.dtype != np.uint8:  # 16-bit masks: scale to 8 bits
        m = (m.astype(np.float64) * (255.0 / np.iinfo(m.dtype).max)).astype(np.uint8)
    if m.ndim == 3:
        m = cv2.cvtColor(m, cv2.COLOR_BGRA2GRAY if m.shape[2] == 4 else cv2.COLOR_BGR2GRAY) if m.shape[2] in (3, 4) \
            else m[:, :, 0]
    return (m >= 128).astype(np.uint8)


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Original-resolution BGR image and {0,1} mask; DataError when they do not match."""
    img = read_image(pair.image)
    mask = read_mask(pair.mask)
    if mask.shape != img.shape[:2]:
        raise DataError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {pair.image.name} is "
                        f"{img.shape[1]}x{img.shape[0]}; masks must have the image's size")
    return img, mask




def size_hw(size) -> tuple[int, int]:
    """(H, W) of a network input size given as a square side or as [H, W]."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def size_text(size) -> str:
    """A size as --size takes it: the side of a square ("320"), else HxW ("288x448")."""
    height, width = size_hw(size)
    return str(height) if height == width else f"{height}x{width}"


def check_size(size) -> None:
    sides = [size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else [None]
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and s > 0 and s % 16 == 0 for s in sides):
        raise DataError(f"input size {size!r}: give a positive multiple of 16 (npseg's engines need it), "
                        "or two as [H, W], e.g. 256, 320 or [288, 448]")


def resize_sample(img_bgr: np.ndarray, mask01: np.ndarray, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Network-size RGB uint8 image (cv2 bilinear, as npseg preprocesses) and nearest-resized mask;
    `size` is a square side or [H, W]."""
    h, w = size_hw(size)
    img = cv2.resize(img_bgr, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    mask = cv2.resize(mask01, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(img), mask


# ---------------------------------------------------------------- splits

SEQUENCES_FILE = "sequences.txt"  # a video dataset's sequences: "first-last" stems (inclusive ids), one a line
SPLIT_RULE = (f"per dataset, seeded: random {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} train/test, validation = "
              f"{VAL_FRACTION:.0%} of train (early stopping only), near-duplicate frames on one side; a video dataset "
              f"({SEQUENCES_FILE}) by whole sequences, about 70/10/20 of its frames")
MIN_IMAGES = 3  # a split needs one image each for train, validation and test
SEQUENCE_FRACTIONS = {"test": 0.2, "val": 0.1}  # of the frames; the rest trains
# Near-duplicate frames (mean absolute difference of 32x32 grey thumbnails under 1.5 grey levels,
# measured on every pair of each dataset): a split keeps each group on one side.
NEAR_DUPLICATES = {
    "kvasir-seg": (("cju30bmab08bi0835mvlr6e0r", "cju77k828z46w0871r0avuoo9"),
                   ("cju76lsehyia10987u54vn8rb", "cju772304yw5t0818vbw8kkjf"),
                   ("cju886ryxnsl50801r93jai7q", "cju8amfdtqi4x09871tygrgqe")),
    "polypgen": (("11_endocv2021_positive_948", "11_endocv2021_positive_968", "11_endocv2021_positive_976"),
                 ("232OLCV1_100H0002", "232OLCV1_100S0001"), ("430OLCV1_100H0002", "430OLCV1_100S0001"),
                 ("510OLCV1_100H0010", "510OLCV1_100S0009"), ("EndoCV2021_001028", "EndoCV2021_001031"),
                 ("EndoCV2021_001029", "EndoCV2021_001030"), ("EndoCV2021_001138", "EndoCV2021_001139"),
                 ("EndoCV2021_C5_50000140", "EndoCV2021_C5_50000141"),
                 ("EndoCV2021_C5_50000284", "EndoCV2021_C5_50000285")),
}


def make_split(stems: list[str], seed: int, test_fraction: float = TEST_FRACTION,
               val_fraction: float = VAL_FRACTION, together=()) -> dict[str, list[str]]:
    """Seeded random 80/20 train/test, then validation carved out of train (at least one image each).
    Each group of stems in `together` (near-duplicates) goes where its first member in the seeded
    order went. Sorted lists of stems."""
    stems = sorted(stems)
    order = np.random.default_rng(seed).permutation(len(stems))
    n_test = max(1, int(round(test_fraction * len(stems))))
    rest = order[n_test:]
    n_val = max(1, int(round(val_fraction * len(rest))))
    part_of = {stems[i]: "test" for i in order[:n_test]}
    part_of |= {stems[i]: "val" for i in rest[:n_val]} | {stems[i]: "train" for i in rest[n_val:]}
    rank = {stems[i]: r for r, i in enumerate(order)}
    for group in together:
        present = [s for s in group if s in part_of]
        for s in present:
            part_of[s] = part_of[min(present, key=rank.__getitem__)]
    return {k: sorted(s for s in stems if part_of[s] == k) for k in ("train", "val", "test")}


def read_sequences(path) -> list[list[str]]:
    """The stems of each sequence of a SEQUENCES_FILE ("first-last", inclusive integer ids)."""
    sequences = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        first, sep, last = line.strip().partition("-")
        if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
            raise DataError(f"{path}:{n}: {line!r} is not a sequence 'first-last' of integer frame ids")
        sequences.append([str(i) for i in range(int(first), int(last) + 1)])
    return sequences


def make_sequence_split(stems: list[str], sequences: list[list[str]], seed: int) -> dict[str, list[str]]:
    """Whole sequences to each part (no sequence on both sides): in a seeded order, a sequence goes to
    test, else validation, when it brings that part's frame count nearer its SEQUENCE_FRACTIONS share,
    else to train (each part gets one first). A stem in no sequence counts as a sequence of its own."""
    known = set(stems)
    groups = [[s for s in seq if s in known] for seq in sequences]
    listed = {s for g in groups for s in g}
    groups = [g for g in groups if g] + [[s] for s in sorted(known - listed)]
    if len(groups) < MIN_IMAGES:
        raise DataError(f"{len(groups)} sequences: a split by sequence needs at least {MIN_IMAGES} "
                        "(one each for train, validation and test)")
    target = {k: f * len(stems) for k, f in SEQUENCE_FRACTIONS.items()}
    parts = {"train": [], "val": [], "test": []}
    for i in np.random.default_rng(seed).permutation(len(groups)):
        g = groups[i]
        # an empty part first; then a part that g brings nearer its target (c + n/2 < t)
        part = next((k for k in ("test", "val", "train") if not parts[k]), None) or next(
            (k for k in ("test", "val") if len(parts[k]) + len(g) / 2 < target[k]), "train")
        parts[part] += g
    return {k: sorted(v) for k, v in parts.items()}


def new_split(root, stems: list[str], seed: int) -> dict[str, list[str]]:
    """A dataset's split from `seed`: by sequence when its folder has a SEQUENCES_FILE, else
    make_split with its NEAR_DUPLICATES kept together. DataError below MIN_IMAGES images."""
    if len(stems) < MIN_IMAGES:
        raise DataError(f"{root}: {len(stems)} image/mask pair(s); a split needs at least {MIN_IMAGES} "
                        "(one each for train, validation and test)")
    sequences = Path(root) / SEQUENCES_FILE
    if sequences.exists():
        return make_sequence_split(stems, read_sequences(sequences), seed)
    return make_split(stems, seed, together=NEAR_DUPLICATES.get(dataset_name(root), ()))


def split_hash(split: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(split, sort_keys=True).encode()).hexdigest()[:16]


def dataset_name(root: str | os.PathLike) -> str:
    return Path(root).resolve().name


def read_split_file(path) -> dict[str, list[str]]:
    """A split file (runs/<run>/splits/<dataset>.json: train, val and test lists of file stems)."""
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as a split file ({e})") from None
    if not (isinstance(split, dict) and set(split) == {"train", "val", "test"}):
        raise DataError(f"{path}: not a split file (a JSON object with train, val and test lists of file stems, "
                        "as runs/<run>/splits/<dataset>.json)")
    return split


def load_or_make_split(root, seed: int, split_file: Path | None = None, skip_bad: bool = False,
                       limit: int | None = None, inherited: dict | None = None) -> dict[str, list[str]]:
    """The split recorded in `split_file` when it exists (so resume and eval reuse it), else the one
    a packed copy records (`write_pack`), else
    `inherited` (the split an --init or --splits-from file recorded for this dataset) when it covers exactly
    this folder's images, so that a fine-tune never trains on its starting model's test images,
    else a new one from `seed`. `limit` keeps the first N stems of each part (for smoke runs)."""
    if split_file is not None and split_file.exists():
        return read_split_file(split_file)
    stems = [p.stem for p in list_pairs(root, skip_bad=skip_bad)]
    packed = pack_info(root)
    if packed is not None:
        split = _packed_split(root, packed, stems, inherited)
    elif inherited is not None and sorted(s for part in inherited.values() for s in part) == sorted(stems):
        split = {k: list(v) for k, v in inherited.items()}
    else:
        if inherited is not None:
            warnings.warn(f"{root}: the recorded split (--init or --splits-from) for {dataset_name(root)!r} does "
                          f"not list exactly this folder's images, so a new split (seed {seed}) is made; images "
                          "the starting model was tested on may now be in this run's train part", stacklevel=2)
        split = new_split(root, stems, seed)
    if limit:
        split = {k: v[:max(1, limit if k == "train" else limit // 4)] for k, v in split.items()}
    if split_file is not None:
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text(json.dumps(split, indent=0))
    return split


def _paired_stems(root: Path, stems: list[str], pairs: dict[str, Pair], skip_bad: bool) -> list[str]:
    """The split's stems that have an image/mask pair; one without stops with DataError (or is dropped
    with a warning under `skip_bad`)."""
    for s in stems:
        if s not in pairs:
            _bad(f"{root / 'images'}: split names {s!r} but no image/mask pair has that stem", skip_bad)
    return [s for s in stems if s in pairs]


def _resized_samples(pairs: dict[str, Pair], stems: list[str], size, skip_bad: bool, progress: str | None):
    """(stem, RGB image, {0,1} mask) at `size` for each stem, decoded in order; a bad file stops with
    DataError or, under `skip_bad`, is skipped with a warning. `progress`: a progress bar's title."""
    it = stems
    if progress:
        from tqdm import tqdm
        it = tqdm(stems, desc=progress, mininterval=5)
    for s in it:
        try:
            img, mask = read_pair(pairs[s])
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e} (or pass --skip-bad to skip such files with a warning)") from None
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        yield (s, *resize_sample(img, mask, size))


# ---------------------------------------------------------------- packed copies

PACK_FILE = "pack.json"
PACK_JPEG_QUALITY = 95  # with full chroma, training on the copy retraces training on the originals


def pack_info(root) -> dict | None:
    """What a packed copy (`python -m trainer pack`) records about itself: its dataset's whole split,
    the size it was resized to, the folder it came from and the JPEG quality; None for an ordinary
    dataset folder."""
    path = Path(root) / PACK_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e}); pack the dataset again with `python -m trainer pack`") from None
    if not (isinstance(info, dict) and {"split", "size", "source", "jpeg_quality"} <= set(info)
            and isinstance(info["split"], dict) and set(info["split"]) == {"train", "val", "test"}):
        raise DataError(f"{path}: not a pack record (split, size, source, jpeg_quality); pack the dataset again "
                        "with `python -m trainer pack`")
    return info


def _packed_split(root, packed: dict, stems: list[str], inherited: dict | None) -> dict[str, list[str]]:
    """A packed copy's recorded split, checked against the images it holds (its train and validation
    parts, no test images) and against the split --init or --splits-from records."""
    split = {k: list(v) for k, v in packed["split"].items()}
    if sorted(split["train"] + split["val"]) != sorted(stems):
        raise DataError(f"{root}: its images are not the train and validation parts that {PACK_FILE} records "
                        "(files added or removed after packing); pack the dataset again")
    if inherited is not None and sorted(inherited["test"]) != sorted(split["test"]):
        raise DataError(f"{root}: packed with another split than --init or --splits-from records for "
                        f"{dataset_name(root)!r}; pack it again with the same --init or --splits-from")
    return split


def write_pack(root, split: dict[str, list[str]], out_dir, size, jpeg_quality: int = PACK_JPEG_QUALITY,
               skip_bad: bool = False, progress: bool = True) -> tuple[Path, int]:
    """Write the train and validation samples of `root`'s split, resized to `size`, to out_dir/<dataset>/
    (images as JPEG at `jpeg_quality` with full-resolution chroma, masks as 0/255 PNG) with PACK_FILE recording the whole split;
    the test images are left out. Returns (the packed folder, its bytes)."""
    root = Path(root)
    pairs = {p.stem: p for p in list_pairs(root, skip_bad=skip_bad)}
    dest = Path(out_dir) / dataset_name(root)
    if dest.exists():
        raise DataError(f"{dest}: already exists; remove it or pack to another folder (-o)")
    stems = _paired_stems(root, split["train"] + split["val"], pairs, skip_bad)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        kept = {"train": [], "val": []}
        train = set(split["train"])
        samples = _resized_samples(pairs, stems, size, skip_bad,
                                   f"packing {dataset_name(root)} ({len(stems)} train and validation samples)"
                                   if progress else None)
        for s, img, mask in samples:
            # full-resolution chroma (4:4:4): the default 4:2:0 halves the colour detail at the polyp's edge
            cv2.imwrite(str(tmp / "images" / f"{s}.jpg"), np.ascontiguousarray(img[:, :, ::-1]),
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality,
                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
            cv2.imwrite(str(tmp / "masks" / f"{s}.png"), mask * 255)
            kept["train" if s in train else "val"].append(s)
        record = {"split": {"train": kept["train"], "val": kept["val"], "test": list(split["test"])},
                  "size": list(size_hw(size)), "source": str(root.resolve()), "jpeg_quality": jpeg_quality}
        (tmp / PACK_FILE).write_text(json.dumps(record, indent=0))
        os.replace(tmp, dest)
    except BaseException:  # a stopped pack leaves nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


# ---------------------------------------------------------------- cache

def _cache_key(root: Path, stems: list[str], pairs: dict[str, Pair], size) -> str:
    height, width = size_hw(size)
    side = height if height == width else f"{height}x{width}"  # square keys as before: old caches stay valid
    h = hashlib.sha256(f"{CACHE_VERSION}|{side}|{root.resolve()}".encode())
    for s in stems:
        for p in (pairs[s].image, pairs[s].mask):
            st = p.stat()
            h.update(b"|" + os.fsencode(p.name) + f":{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_arrays(root, stems: list[str], cache_dir, skip_bad: bool = False, progress: bool = True,
                  size=SIZE):
    """(stems kept, images [N,H,W,3] RGB uint8, masks [N,H,W] {0,1}) at `size` (a square side or [H, W]),
    decoded once and memory-mapped from `cache_dir` afterwards. Bad files stop with DataError
    (or are dropped with a warning under `skip_bad`)."""
    root = Path(root)
    pairs = {p.stem: p for p in list_pairs(root, skip_bad=skip_bad)}
    stems = _paired_stems(root, stems, pairs, skip_bad)
    d = Path(cache_dir) / f"{dataset_name(root)}-{_cache_key(root, stems, pairs, size)}"
    if (d / "done").exists():
        return _load_cache(d)
    imgs, masks, kept = [], [], []
    samples = _resized_samples(pairs, stems, size, skip_bad,
                               f"caching {dataset_name(root)} ({len(stems)} samples)" if progress else None)
    for s, img, mask in samples:
        imgs.append(img)
        masks.append(mask)
        kept.append(s)
    if not kept:
        raise DataError(f"{root}: no usable samples in this split")
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, arr in (("images", imgs), ("masks", masks)):
        np.save(tmp / f"{name}.npy", np.stack(arr))
    (tmp / "stems.json").write_text(json.dumps(kept))
    (tmp / "done").write_text("")
    try:
        os.replace(tmp, d)  # atomic: a concurrent run either sees the finished cache or builds its own
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_cache(d)


def _load_cache(d: Path):
    kept = json.loads((d / "stems.json").read_text())
    return (kept, *(np.load(d / f"{k}.npy", mmap_mode="r") for k in ("images", "masks")))


# ---------------------------------------------------------------- torch dataset

# name -> what it does (recorded in the weights' provenance); trainer.augment's specs
# ("flips-rotations", "domain-shift", "domain-shift:-jpeg", ...) are accepted too
AUGMENTATIONS = {"recipe": "hflip + rotation +-10 deg",
                 "strong": "hflip + vflip + rotation +-10 deg + zoom 0.8-1.25 + brightness/contrast/saturation x0.8-1.2",
                 **{name: f"{name}: {A.describe(name)}" for name in A.PRESETS}}


def describe_augmentation(name: str) -> str:
    """What an augmentation name or trainer.augment spec does, for the provenance."""
    check_augmentation(name)
    return AUGMENTATIONS.get(name) or f"{name}: {A.describe(name)}"


def check_augmentation(name: str) -> None:
    if name in ("recipe", "strong"):
        return
    try:
        A.parse(name)
    except A.AugmentError as e:
        raise ValueError(f"{e}; or one of {list(AUGMENTATIONS)}") from None


def augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, mode: str = "recipe"):
    """"recipe": horizontal flip (p 0.5) and rotation in [-10, 10] degrees, the image bilinear with
    reflected border, masks nearest with zero border. "strong" adds, for multi-centre data whose
    colour and scale vary by centre: vertical flip (p 0.5), zoom in [0.8, 1.25] in the same warp,
    and brightness, contrast and saturation each scaled in [0.8, 1.2]."""
    if mode not in ("recipe", "strong"):
        raise ValueError(f"augment: mode {mode!r} is 'recipe' or 'strong' (trainer.augment applies the others)")
    strong = mode == "strong"
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if strong and rng.random() < 0.5:
        img, mask = img[::-1], mask[::-1]
    angle = rng.uniform(-10.0, 10.0)
    scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))) if strong else 1.0
    h, w = mask.shape
    rot = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, scale)
    img = cv2.warpAffine(np.ascontiguousarray(img), rot, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    mask = cv2.warpAffine(np.ascontiguousarray(mask), rot, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if strong:
        img = _jitter_colour(img, *rng.uniform(0.8, 1.2, size=3))
    return img, mask


def _jitter_colour(img: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Scale brightness, then contrast about the mean grey, then saturation about each pixel's grey."""
    x = img.astype(np.float32) * np.float32(brightness)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)  # RGB
    mean = grey.mean()
    x = (x - mean) * np.float32(contrast) + mean
    grey = (grey - mean) * np.float32(contrast) + mean  # the grey of the new x (the map is linear)
    x = (x - grey[..., None]) * np.float32(saturation) + grey[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


PASTE_AREA = (0.001, 0.01)  # image fraction a pasted polyp covers: the small polyps every file misses


def paste_small_polyp(img: np.ndarray, mask: np.ndarray, src_img: np.ndarray, src_mask: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Copy-paste for small polyps: the polyp of (src_img, src_mask), with a margin, shrunk so that it
    covers a log-uniform PASTE_AREA fraction of the image, is blended into `img` at a random place
    (a feathered edge, so that no seam marks it) and added to `mask`. Returns the image and mask, or
    None when no place fits (the sample stays as it is)."""
    h, w = mask.shape
    ys, xs = np.nonzero(src_mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad_y, pad_x = max(2, (y1 - y0) // 4), max(2, (x1 - x0) // 4)  # some of the mucosa around it
    y0, x0 = max(0, y0 - pad_y), max(0, x0 - pad_x)
    y1, x1 = min(src_mask.shape[0], y1 + pad_y), min(src_mask.shape[1], x1 + pad_x)
    area = float(np.exp(rng.uniform(*np.log(PASTE_AREA)))) * h * w
    scale = float(np.sqrt(area / len(ys)))
    ph, pw = max(2, round((y1 - y0) * scale)), max(2, round((x1 - x0) * scale))
    if ph >= h or pw >= w:
        return None
    patch = cv2.resize(np.ascontiguousarray(src_img[y0:y1, x0:x1]), (pw, ph), interpolation=cv2.INTER_AREA)
    soft = cv2.resize(src_mask[y0:y1, x0:x1].astype(np.float32), (pw, ph), interpolation=cv2.INTER_AREA)
    # opaque on the polyp, fading to 0 within the margin: the source's own surround stays out, so no seam
    alpha = np.clip(2.0 * cv2.GaussianBlur(soft, (0, 0), max(0.6, min(ph, pw) / 16)), 0.0, 1.0)
    alpha[[0, -1], :] = 0.0
    alpha[:, [0, -1]] = 0.0
    alpha = alpha[..., None]
    for _ in range(10):  # on the mucosa (not the black surround or text) and clear of the sample's own polyp
        top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        if not mask[top:top + ph, left:left + pw].any() and img[top:top + ph, left:left + pw].max(axis=2).min() > 40:
            break
    else:
        return None
    img = np.array(img)
    region = img[top:top + ph, left:left + pw].astype(np.float32)
    # the destination's exposure: a polyp lit like its new surround
    patch = patch.astype(np.float32) * np.float32(np.clip((region.mean() + 1) / (patch.mean() + 1), 0.5, 2.0))
    img[top:top + ph, left:left + pw] = np.clip(alpha * patch + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
    mask = np.array(mask)
    mask[top:top + ph, left:left + pw] |= (soft >= 0.5).astype(np.uint8)
    return img, mask


def _pasteable(mask: np.ndarray) -> bool:
    m = np.asarray(mask)
    return float(m.mean()) >= 0.005 and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def _no_targets(mask01: np.ndarray) -> dict:
    return {}


def _target_tensor(target) -> torch.Tensor:
    return torch.from_numpy(np.asarray(target, dtype=np.float32)[None])


MULTISCALE_STREAM = 0x6D73  # keeps the batch sides' generator apart from the samples' (seed, epoch, k) ones


def batch_sides(bounds: tuple[int, int], seed: int, epoch: int):
    """Multi-scale training: the side of each batch of an epoch, a multiple of 32 in [min, max] `bounds`,
    drawn uniformly from a generator seeded by (seed, epoch), so that a resumed epoch draws the same."""
    rng = np.random.default_rng((MULTISCALE_STREAM, seed, epoch))
    while True:
        yield 32 * int(rng.integers(bounds[0] // 32, bounds[1] // 32 + 1))


def resized_batch(item: dict, side: int, targets=_no_targets) -> dict:
    """A loader batch at side x side: the images bilinear (antialiased when shrunk), the masks nearest, and
    the family's extra `targets` made again from the resized masks, as PolypDataset makes them."""
    size = (side, side)
    image = torch.nn.functional.interpolate(item["image"], size, mode="bilinear", align_corners=False, antialias=True)
    mask = torch.nn.functional.interpolate(item["mask"], size, mode="nearest-exact")
    made = [targets(m[0].numpy().astype(np.uint8)) for m in mask]
    extra = {name: torch.stack([_target_tensor(t[name]) for t in made]) for name in made[0]}
    return {"image": image.clamp(0, 255), "mask": mask, **extra}


class PolypDataset(torch.utils.data.Dataset):
    """Cached samples of one or more datasets. Items: {"image": [3,H,W] float32 RGB pixels in 0..255
    (the training loop normalises them as the model family's npseg preprocessing record says),
    "mask": [1,H,W] float32 {0,1}, and each of `targets(mask)` (the family's extra targets, made from
    the augmented mask) as [1,H,W] float32}.
    With `seed`, augmentation is a deterministic function of (seed, epoch, index), whatever the
    worker or process; `augmentation` names it ("recipe", "strong" or a trainer.augment spec).
    With `paste_small` p (and `seed`), a sample gets, with probability p, a small copy of another
    sample's polyp pasted in (`paste_small_polyp`). With `balanced` N, each epoch draws N samples
    from every dataset, a smaller one repeated (each pass over it in a new seeded order), a larger one
    a seeded subset,
    so that no dataset dominates."""

    def __init__(self, parts: list[tuple], seed: int | None = None, augmentation: str = "recipe",
                 paste_small: float = 0.0, balanced: int = 0,
                 targets=_no_targets):
        check_augmentation(augmentation)
        self.parts = parts  # (stems, images, masks) per dataset
        self.per_part = [[(p, i) for i in range(len(part[0]))] for p, part in enumerate(parts)]
        self.index = [k for ix in self.per_part for k in ix]
        self.balanced = balanced  # samples per dataset and epoch; 0: each sample once
        # paste sources per dataset: polyps large enough to shrink (>= 0.5 % of the image) and clear of
        # the image border (a polyp cut by the frame would be pasted with a straight edge)
        self.paste_small = paste_small
        self.paste_sources = [[i for i in range(len(part[0])) if _pasteable(part[2][i])]
                              for part in parts] if paste_small > 0 else []
        self.seed = seed
        self.augmentation = augmentation
        self.parts_on = None if augmentation in ("recipe", "strong") else A.parse(augmentation)
        self.targets = targets
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.balanced * len(self.per_part) if self.balanced else len(self.index)

    def _sample(self, k: int) -> tuple[int, int]:
        """(dataset, sample) of item k this epoch."""
        if not self.balanced:
            return self.index[k]
        part, draw = divmod(k, self.balanced)
        ix = self.per_part[part]
        passes, at = divmod(draw, len(ix))
        order = np.random.default_rng((self.seed or 0, self.epoch, part, passes)).permutation(len(ix))
        return ix[order[at]]

    def __getitem__(self, k):
        p, i = self._sample(k)
        _, images, masks = self.parts[p]
        img, mask = images[i], masks[i]
        if self.seed is not None:
            rng = np.random.default_rng((self.seed, self.epoch, k))
            if self.paste_small > 0 and self.paste_sources[p] and rng.random() < self.paste_small:
                j = self.paste_sources[p][int(rng.integers(len(self.paste_sources[p])))]
                img, mask = paste_small_polyp(img, mask, images[j], masks[j], rng) or (img, mask)
            if self.parts_on is None:
                img, mask = augment(img, mask, rng, self.augmentation)
            else:
                img, mask = A.augment(img, mask, rng, self.parts_on)
        mask = np.array(mask, dtype=np.uint8)
        item = {"image": torch.from_numpy(np.ascontiguousarray(img).transpose(2, 0, 1).astype(np.float32)),
                "mask": torch.from_numpy(mask.astype(np.float32)[None])}
        for name, target in self.targets(mask).items():
            item[name] = _target_tensor(target)
        return item
