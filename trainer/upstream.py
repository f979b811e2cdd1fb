"""Import the UltraSeg authors' published checkpoint (a plain state_dict)."""
from __future__ import annotations

from pathlib import Path

import torch

from npseg.config import ultraseg_130k

from .export import export_weights
from .model import UltraSeg, build


def load_upstream(pth) -> UltraSeg:
    """The 130K torch model with the published weights (names already match ours)."""
    state = torch.load(str(pth), map_location="cpu", weights_only=True)
    model = build(ultraseg_130k())
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_upstream(pth, out) -> Path:
    model = load_upstream(pth)
    return export_weights(model, out, provenance={
        "source": "UltraSeg authors' published checkpoint best-ultraseg-130K.pth (Apache-2.0)",
        "file": Path(pth).name,
        "training_data": "not stated by the authors; use as an architecture reference, not an accuracy benchmark",
    })


def add_convert_arguments(p) -> None:
    p.add_argument("pth", help="the published checkpoint, e.g. ../shared/upstream/best-ultraseg-130K.pth")
    p.add_argument("-o", "--output", required=True, help="the npseg weights file to write (.safetensors)")


def run_convert(args) -> int:
    import pickle
    import sys

    if not Path(args.pth).is_file():
        print(f"error: {args.pth}: no such checkpoint file", file=sys.stderr)
        return 2
    try:
        out = convert_upstream(args.pth, args.output)
    except pickle.UnpicklingError:
        print(f"error: {args.pth}: not a plain PyTorch state_dict (it must load with torch.load(weights_only=True))",
              file=sys.stderr)
        return 1
    except (RuntimeError, ValueError, OSError) as e:  # foreign state_dict, or unwritable output
        print(f"error: {args.pth}: cannot convert: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
