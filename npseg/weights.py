"""The npseg weights file: safetensors with self-describing metadata.

Layout (standard safetensors): 8-byte little-endian header length N, N bytes
of JSON header, then the raw little-endian float32 tensor data. The header's
`__metadata__` (string -> string) holds:

    format            "npseg-weights"
    format_version    "1"
    architecture      "ultraseg"
    config            JSON of UltraSegConfig (name, widths, flags, out_ch)
    input_size        JSON [H, W] the network was trained at
    preprocessing     JSON {"resize": ..., "color_order": "RGB", "scale": 1/255}
    provenance        JSON (datasets, split, commit, date, ...)
    metrics           JSON (measured accuracy, may be {})
    tensors_sha256    SHA-256 over the tensors (sorted by name: name, shape, bytes)

Everything is checked at load; nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ARCHITECTURE, UltraSegConfig
from .tensor_spec import expected_tensors

FORMAT = "npseg-weights"
FORMAT_VERSION = "1"
DEFAULT_PREPROCESSING = {
    "resize": "cv2.resize bilinear (INTER_LINEAR) to input_size",
    "color_order": "RGB",
    "scale": 1.0 / 255.0,
    "mean": None,
    "std": None,
}
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_DTYPES = {"F32": np.float32}


class WeightsError(ValueError):
    """A weights file that cannot be used; the message says what and how to fix it."""


@dataclass
class Weights:
    config: UltraSegConfig
    tensors: dict[str, np.ndarray]
    input_size: tuple[int, int] = (256, 256)
    preprocessing: dict = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    path: str | None = None


def tensors_checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.array(tensors[name], dtype="<f4", order="C")
        h.update(name.encode())
        h.update(repr(tuple(a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_tensors(cfg: UltraSegConfig, tensors: dict[str, np.ndarray], source: str) -> None:
    """Raise WeightsError listing every missing, extra or mis-shaped tensor."""
    expected = expected_tensors(cfg)
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


def save(path: str | os.PathLike, weights: Weights) -> None:
    """Write `weights` as an npseg safetensors file (used by the trainer's exporter)."""
    from safetensors.numpy import save_file  # writing only; loading parses the format itself

    tensors = {k: np.array(v, dtype=np.float32, order="C") for k, v in weights.tensors.items()}  # keeps 0-d scalars 0-d
    check_tensors(weights.config, tensors, str(path))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "config": json.dumps(weights.config.to_dict()),
        "input_size": json.dumps(list(weights.input_size)),
        "preprocessing": json.dumps(weights.preprocessing),
        "provenance": json.dumps(weights.provenance),
        "metrics": json.dumps(weights.metrics),
        "tensors_sha256": tensors_checksum(tensors),
    }
    save_file(tensors, str(path), metadata=meta)


def _json_field(meta: dict, key: str, source: str):
    if key not in meta:
        raise WeightsError(f"{source}: metadata lacks {key!r}; re-export the file with `python -m trainer export`")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{source}: metadata field {key!r} is not valid JSON ({e})") from None


def _read_header(raw: bytes, source: str) -> tuple[dict, int]:
    if raw[:2] == b"PK" or raw[:1] == b"\x80":
        raise WeightsError(
            f"{source}: this is a PyTorch pickle/zip checkpoint (.pth), which npseg never unpickles; "
            "convert it first: `python -m trainer convert-upstream FILE.pth -o FILE.safetensors` "
            "or `python -m trainer export CHECKPOINT -o FILE.safetensors`"
        )
    if len(raw) < 8:
        raise WeightsError(f"{source}: file is {len(raw)} bytes, too short to be a safetensors file (truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER_BYTES or 8 + n > len(raw):
        raise WeightsError(
            f"{source}: header length field says {n} bytes but the file has {len(raw) - 8} after it: "
            "the file is truncated or corrupt, or not a safetensors file"
        )
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{source}: header is not valid JSON ({e}): the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{source}: header is not a JSON object: the file is corrupt")
    return header, 8 + n


def _read_tensors(raw: bytes, header: dict, data_start: int, source: str) -> dict[str, np.ndarray]:
    data_len = len(raw) - data_start
    tensors = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{source}: header entry for tensor {name!r} is malformed: the file is corrupt") from None
        if dtype not in _DTYPES:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {dtype}, expected F32 (float32)")
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4
        if not (0 <= begin <= end <= data_len) or end - begin != nbytes:
            raise WeightsError(
                f"{source}: tensor {name!r} of shape {shape} claims bytes [{begin}, {end}) "
                f"of a {data_len}-byte data section: the file is truncated or corrupt"
            )
        end_max = max(end_max, end)
        buf = np.frombuffer(raw, dtype="<f4", count=nbytes // 4, offset=data_start + begin)
        tensors[name] = buf.reshape(shape).astype(np.float32)  # own, writable copy
    if end_max != data_len:
        raise WeightsError(f"{source}: {data_len - end_max} trailing bytes after the tensor data: the file is corrupt")
    return tensors


def load(path: str | os.PathLike) -> Weights:
    """Read and fully validate an npseg weights file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{source}: no such weights file") from None
    except IsADirectoryError:
        raise WeightsError(f"{source}: is a directory, expected a .safetensors weights file") from None
    header, data_start = _read_header(raw, source)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{source}: not an npseg weights file (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}); "
            "export it with `python -m trainer export`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{source}: unknown format_version {meta.get('format_version')!r}; this npseg reads version "
            f"{FORMAT_VERSION!r}: upgrade npseg or re-export the file"
        )
    if meta.get("architecture") != ARCHITECTURE:
        raise WeightsError(
            f"{source}: unknown architecture {meta.get('architecture')!r}; this npseg runs {ARCHITECTURE!r}"
        )
    try:
        config = UltraSegConfig.from_dict(_json_field(meta, "config", source))
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{source}: metadata 'config' is invalid: {e}") from None
    tensors = _read_tensors(raw, header, data_start, source)
    check_tensors(config, tensors, source)
    stored = meta.get("tensors_sha256")
    if stored is None:
        raise WeightsError(f"{source}: metadata lacks 'tensors_sha256'; re-export the file")
    if tensors_checksum(tensors) != stored:
        raise WeightsError(
            f"{source}: tensor data does not match its SHA-256 checksum: the file is corrupt or was modified"
        )
    input_size = tuple(int(v) for v in _json_field(meta, "input_size", source))
    return Weights(
        config=config,
        tensors=tensors,
        input_size=input_size,
        preprocessing=_json_field(meta, "preprocessing", source),
        provenance=_json_field(meta, "provenance", source),
        metrics=_json_field(meta, "metrics", source),
        path=source,
    )
