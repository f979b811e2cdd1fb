"""The npseg weights file: safetensors with self-describing metadata.

Layout (standard safetensors): 8-byte little-endian header length N, N bytes
of JSON header, then the raw little-endian float32 tensor data. The header's
`__metadata__` (string -> string) holds:

    format            "npseg-weights"
    format_version    "2" ("1": UltraSeg files from before preprocessing was data; still read)
    architecture      a family of npseg.models (e.g. "ultraseg")
    config            JSON of the family's config dataclass (name, widths, flags, ...)
    input_size        JSON [H, W] the network was trained at
    preprocessing     JSON record of npseg.preprocessing: colour order, resize, normalisation
    output            JSON {"activation": "softmax" | "sigmoid", "polyp_channel": k} and optionally
                      "threshold": the decision threshold (default 0.5; `python -m trainer calibrate`)
    provenance        JSON (datasets, split, commit, date, ...)
    metrics           JSON (measured accuracy, may be {})
    tensors_sha256    SHA-256 over the tensors (sorted by name: name, shape, bytes)
    metadata_sha256   SHA-256 over the fields above (canonical JSON); written by
                      `save`, verified when present (files from before it lack it)

Everything is checked at load, and every failure is a WeightsError naming the
file and the problem: not a regular file, truncation, corrupt header, a .pth
checkpoint (never unpickled), unknown version/architecture/field, absurd sizes,
wrong dtype, missing, extra or mis-shaped tensors, checksum mismatches,
non-finite values, negative BatchNorm variances.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import preprocessing as records
from .engines import check_input_size
from .models import FAMILIES, Family

FORMAT = "npseg-weights"
FORMAT_VERSION = "2"
_V1_ARCHITECTURE = "ultraseg"  # version 1 files are UltraSeg with the fixed preprocessing below
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_MAX_FILE_BYTES = 1 << 30  # the widest variant (4M parameters) is ~20 MB
_DTYPES = {"F32": np.float32}
_REQUIRED_FIELDS = {
    "1": ("format", "format_version", "architecture", "config", "input_size", "preprocessing", "provenance",
          "metrics", "tensors_sha256"),
    "2": ("format", "format_version", "architecture", "config", "input_size", "preprocessing", "output",
          "provenance", "metrics", "tensors_sha256"),
}
_PTH_HINT = ("convert it first: `python -m trainer convert-upstream FILE.pth -o FILE.safetensors` "
             "or `python -m trainer export CHECKPOINT -o FILE.safetensors`")


class WeightsError(ValueError):
    """A weights file that cannot be used; the message says what and how to fix it."""


def family_of(config) -> Family:
    """The registered family whose config type `config` is (its module is imported: it defines the type)."""
    for fam in FAMILIES.imported():
        if isinstance(config, fam.config_type):
            return fam
    raise WeightsError(f"config {config!r} belongs to no registered model family")


@dataclass
class Weights:
    """A model file's content. `preprocessing` and `output` default to the family's records."""

    config: object
    tensors: dict[str, np.ndarray]
    input_size: tuple[int, int] = (256, 256)
    preprocessing: dict | None = None
    output: dict | None = None
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self):
        self.preprocessing = self.preprocessing or dict(self.family.preprocessing)
        self.output = self.output or dict(self.family.output)

    @property
    def family(self) -> Family:
        return family_of(self.config)


def tensors_checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.array(tensors[name], dtype="<f4", order="C")
        h.update(name.encode())
        h.update(repr(tuple(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _metadata_checksum(meta: dict) -> str:
    fields = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_tensors(cfg, tensors: dict[str, np.ndarray], source: str) -> None:
    """Raise WeightsError listing every missing, extra or mis-shaped tensor."""
    expected = family_of(cfg).expected_tensors(cfg)
    problems = []
    for name in sorted(set(expected) - set(tensors)):
        problems.append(f"missing tensor {name!r} (expected shape {expected[name]})")
    for name in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected tensor {name!r} (shape {tuple(tensors[name].shape)})")
    for name in sorted(set(expected) & set(tensors)):
        found = tuple(tensors[name].shape)
        if found != expected[name]:
            problems.append(f"tensor {name!r} has shape {found}, expected {expected[name]}")
    if problems:
        raise WeightsError(
            f"{source}: does not match architecture {cfg.name!r} ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
        )


def _check_values(tensors: dict[str, np.ndarray], source: str) -> None:
    """NaN/inf anywhere, or a negative BatchNorm variance (a NaN square root), would make every
    prediction garbage."""
    problems = []
    for name in sorted(tensors):
        a = tensors[name]
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            problems.append(f"tensor {name!r} holds {bad} non-finite value(s) (NaN/inf)")
        elif name.endswith("running_var") and (a < 0).any():
            problems.append(f"tensor {name!r} holds {int((a < 0).sum())} negative variance(s)")
    if problems:
        raise WeightsError(
            f"{source}: unusable tensor values (did training diverge?):\n  " + "\n  ".join(problems)
        )


def _check_runnable(cfg, source: str) -> None:
    """Refuse configs the engines cannot run, before any engine sees them."""
    problems = family_of(cfg).runnable_problems(cfg)
    if problems:
        raise WeightsError(f"{source}: config {cfg.name!r} cannot run in npseg: " + "; ".join(problems))


def save(path: str | os.PathLike, weights: Weights) -> None:
    """Write `weights` as an npseg safetensors file (used by the trainer's exporter)."""
    from safetensors.numpy import save_file  # writing only; loading parses the format itself

    tensors = {k: np.array(v, dtype=np.float32, order="C") for k, v in weights.tensors.items()}  # keeps 0-d scalars 0-d
    source = str(path)
    _check_runnable(weights.config, source)
    check_tensors(weights.config, tensors, source)
    _check_values(tensors, source)
    _check_records(weights.preprocessing, weights.output, weights.config, source)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": weights.family.name,
        "config": json.dumps(weights.config.to_dict()),
        "input_size": json.dumps(list(weights.input_size)),
        "preprocessing": json.dumps(weights.preprocessing),
        "output": json.dumps(weights.output),
        "provenance": json.dumps(weights.provenance),
        "metrics": json.dumps(weights.metrics),
        "tensors_sha256": tensors_checksum(tensors),
    }
    meta["metadata_sha256"] = _metadata_checksum(meta)
    save_file(tensors, str(path), metadata=meta)


def _read_file(path: str | os.PathLike, source: str) -> bytes:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            raise WeightsError(f"{source}: not a regular file (a device, pipe or socket): "
                               "pass the path of a .safetensors weights file")
        size = info.st_size
        if size > _MAX_FILE_BYTES:
            raise WeightsError(f"{source}: file is {size} bytes, far larger than any npseg weights file "
                               f"(limit {_MAX_FILE_BYTES}): wrong file?")
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{source}: no such weights file") from None
    except IsADirectoryError:
        raise WeightsError(f"{source}: is a directory, expected a .safetensors weights file") from None
    except PermissionError:
        raise WeightsError(f"{source}: permission denied reading the weights file") from None
    except OSError as e:
        raise WeightsError(f"{source}: cannot read the weights file ({e.strerror or e})") from None


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise WeightsError(f"duplicate key(s) {dup}")
    return dict(pairs)


def _looks_like_pth(raw: bytes) -> bool:
    """A zip archive (torch.save since 1.6) or a protocol 2-5 pickle (older torch.save)."""
    return raw[:4] == b"PK\x03\x04" or (raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _read_header(raw: bytes, source: str) -> tuple[dict, int]:
    if len(raw) < 8:
        raise WeightsError(f"{source}: file is {len(raw)} bytes, too short to be a safetensors file (truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    # a real header length is < 16 MiB, so its bytes 3..7 are zero: a .pth's signature never parses as one
    if n > _MAX_HEADER_BYTES:
        if _looks_like_pth(raw):
            raise WeightsError(
                f"{source}: this is a PyTorch pickle/zip checkpoint (.pth), which npseg never unpickles; " + _PTH_HINT
            )
        raise WeightsError(f"{source}: header length field says {n} bytes (limit {_MAX_HEADER_BYTES}): "
                           "not a safetensors file, or its first bytes are corrupt")
    if n < 2:
        raise WeightsError(f"{source}: header length field says {n} bytes, too short for a JSON header: "
                           "the file is corrupt")
    if 8 + n > len(raw):
        raise WeightsError(
            f"{source}: header length field says {n} bytes but the file has {len(raw) - 8} after it: "
            "the file is truncated or corrupt"
        )
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except WeightsError as e:
        raise WeightsError(f"{source}: header has {e}: the file is corrupt") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{source}: header is not valid JSON ({e}): the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{source}: header is a JSON {type(header).__name__}, expected an object: the file is corrupt")
    return header, 8 + n


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read_tensors(raw: bytes, header: dict, data_start: int, source: str) -> dict[str, np.ndarray]:
    data_len = len(raw) - data_start
    tensors, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise WeightsError(f"{source}: header entry for tensor {name!r} is malformed "
                               "(expected keys dtype, shape, data_offsets): the file is corrupt")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise WeightsError(f"{source}: tensor {name!r} has an invalid shape {shape!r}: the file is corrupt")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise WeightsError(f"{source}: tensor {name!r} has invalid data_offsets {offsets!r}: the file is corrupt")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {dtype}, expected F32 (float32); "
                               "re-export the model in float32")
        shape, (begin, end) = tuple(shape), offsets
        nbytes = 4 * int(np.prod(shape, dtype=object))  # Python ints: a corrupt shape cannot overflow
        if not (begin <= end <= data_len) or end - begin != nbytes:
            raise WeightsError(
                f"{source}: tensor {name!r} of shape {shape} claims bytes [{begin}, {end}) "
                f"of a {data_len}-byte data section: the file is truncated or corrupt"
            )
        spans.append((begin, end, name))
        tensors[name] = np.frombuffer(raw, dtype="<f4", count=nbytes // 4, offset=data_start + begin) \
            .reshape(shape).astype(np.float32)  # own, writable, native-order copy
    # safetensors packs the tensors back to back: a gap or overlap means a damaged header
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise WeightsError(f"{source}: tensor {name!r} starts at byte {begin} of the data section, "
                               f"expected {position} (gap or overlap): the file is corrupt")
        position = end
    if position != data_len:
        raise WeightsError(f"{source}: {data_len - position} trailing bytes after the tensor data: "
                           "the file is corrupt")
    return tensors


def _json_field(meta: dict, key: str, source: str, kind: type):
    try:
        value = json.loads(meta[key])
    except (json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{source}: metadata field {key!r} is not valid JSON ({e})") from None
    if not isinstance(value, kind):
        raise WeightsError(f"{source}: metadata field {key!r} is a JSON {type(value).__name__}, "
                           f"expected a {kind.__name__}")
    return value


def _check_metadata(header: dict, source: str) -> dict:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsError(f"{source}: header has no string-to-string '__metadata__': "
                           "not an npseg weights file, or a corrupt one; export it with `python -m trainer export`")
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{source}: not an npseg weights file (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}); "
            "export it with `python -m trainer export`"
        )
    version = meta.get("format_version")
    if version not in _REQUIRED_FIELDS:
        raise WeightsError(
            f"{source}: unknown format_version {version!r}; this npseg reads versions "
            f"{sorted(_REQUIRED_FIELDS)}: upgrade npseg or re-export the file"
        )
    if meta.get("architecture") not in FAMILIES or (version == "1" and meta["architecture"] != _V1_ARCHITECTURE):
        raise WeightsError(
            f"{source}: unknown architecture {meta.get('architecture')!r}; this npseg runs {sorted(FAMILIES)}"
        )
    missing = [k for k in _REQUIRED_FIELDS[version] if k not in meta]
    if missing:
        raise WeightsError(f"{source}: metadata lacks {missing}; re-export the file with `python -m trainer export`")
    unknown = sorted(set(meta) - set(_REQUIRED_FIELDS[version]) - {"metadata_sha256"})
    if unknown:
        raise WeightsError(f"{source}: unknown metadata field(s) {unknown} for format_version {version!r}: "
                           "the file is corrupt or from a newer npseg")
    if "metadata_sha256" in meta and _metadata_checksum(meta) != meta["metadata_sha256"]:
        raise WeightsError(f"{source}: metadata does not match its SHA-256 checksum: "
                           "the file is corrupt or was modified")
    return meta


def _parse_config(meta: dict, source: str):
    fam = FAMILIES[meta["architecture"]]
    d = _json_field(meta, "config", source, dict)
    try:
        config = fam.config_type.from_dict(d)
    except (TypeError, ValueError, KeyError) as e:
        raise WeightsError(f"{source}: metadata 'config' is invalid: {e}") from None
    _check_runnable(config, source)
    return config


def _parse_input_size(meta: dict, source: str) -> tuple[int, int]:
    size = _json_field(meta, "input_size", source, list)
    try:
        if len(size) != 2:
            raise ValueError(f"expected [H, W], got {len(size)} values")
        check_input_size(FAMILIES[meta["architecture"]], *size)
    except ValueError as e:
        raise WeightsError(f"{source}: metadata 'input_size' {str(size)[:80]} is invalid: {e}") from None
    return int(size[0]), int(size[1])


def _check_records(pre, out, config, source: str) -> None:
    problems = records.preprocessing_problems(pre) + records.output_problems(
        out, family_of(config).out_channels(config))
    if problems:
        raise WeightsError(f"{source}: metadata 'preprocessing'/'output' invalid: " + "; ".join(problems))


def _parse_records(meta: dict, config, source: str) -> tuple[dict, dict]:
    """The preprocessing and output records; a version 1 file's are UltraSeg's fixed ones."""
    if meta["format_version"] == "1":
        _json_field(meta, "preprocessing", source, dict)  # prose; must still parse
        fam = FAMILIES[_V1_ARCHITECTURE]
        return dict(fam.preprocessing), dict(fam.output)
    pre = _json_field(meta, "preprocessing", source, dict)
    out = _json_field(meta, "output", source, dict)
    _check_records(pre, out, config, source)
    return pre, out


def load(path: str | os.PathLike) -> Weights:
    """Read and fully validate an npseg weights file."""
    source = str(path)
    raw = _read_file(path, source)
    header, data_start = _read_header(raw, source)
    meta = _check_metadata(header, source)
    config = _parse_config(meta, source)
    input_size = _parse_input_size(meta, source)
    tensors = _read_tensors(raw, header, data_start, source)
    check_tensors(config, tensors, source)
    if tensors_checksum(tensors) != meta["tensors_sha256"]:
        raise WeightsError(
            f"{source}: tensor data does not match its SHA-256 checksum: the file is corrupt or was modified"
        )
    _check_values(tensors, source)
    pre, out = _parse_records(meta, config, source)
    return Weights(
        config=config,
        tensors=tensors,
        input_size=input_size,
        preprocessing=pre,
        output=out,
        provenance=_json_field(meta, "provenance", source, dict),
        metrics=_json_field(meta, "metrics", source, dict),
        path=source,
    )
