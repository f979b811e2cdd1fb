"""Write npseg weights files from torch models and checkpoints."""
from __future__ import annotations

import datetime
import subprocess
import warnings
from pathlib import Path

import torch

from npseg import weights as weights_file


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def model_tensors(model) -> dict:
    """The model's state as float32 NumPy arrays, without BN's step counters."""
    return {
        k: v.detach().cpu().float().numpy()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def export_weights(model, path, *, provenance: dict, metrics: dict | None = None,
                   input_size=(256, 256), preprocessing: dict | None = None) -> Path:
    """Write `model` to `path` as an npseg weights file; returns the path. preprocessing: the npseg
    record it was trained with (default: its family's)."""
    provenance = {"commit": git_commit(), "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), **provenance}
    w = weights_file.Weights(config=model.cfg, tensors=model_tensors(model), input_size=tuple(input_size),
                             preprocessing=preprocessing, provenance=provenance, metrics=metrics or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights_file.save(path, w)
    return path


def export_onnx(model, path, input_size=(256, 256)) -> Path:
    """Write `model` (eval mode, main output only) as ONNX for ONNX Runtime: input "x" [1, 3, H, W],
    output "logits" [1, 2, H, W]."""
    path = Path(path)
    x = torch.zeros(1, 3, *input_size)
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice, and tracer notes on shape checks that are
        # constant for a fixed input size
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["x"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    return path


def convert_upstream(pth, out, family) -> Path:
    """Write the authors' published checkpoint, imported by `family` (a TorchFamily), as a weights file."""
    model = family.import_upstream(pth)
    return export_weights(model, out, provenance={
        "source": f"the {family.name} authors' published checkpoint {Path(pth).name}",
        "file": Path(pth).name,
        "training_data": "not stated by the authors; use as an architecture reference, not an accuracy benchmark",
    })
