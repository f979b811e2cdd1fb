"""UltraLightUNet (MK-UNet), variants T, S, B (and M, L as configs): shared specs/ULTRALIGHTUNET.md.

A U-Net of multi-kernel inverted residual blocks (MKIR: 1x1 expand, depthwise 1x1 + 3x3 + 5x5
branches summed, channel shuffle, 1x1 project, residual), max-pool downsampling, decoder stages
gated by channel and spatial attention, and grouped attention gates on the skips. One sigmoid
logit. Tensor names are the authors' (MK-UNet's mkunet_network.py).
"""
from __future__ import annotations

import dataclasses
import math

from .config import ModelConfig

KERNELS = (1, 3, 5)  # the MKIR's depthwise branches
EXPANSION = 2
CA_RATIOS = (16, 16, 16, 8, 4)  # CA1..CA5
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class UltraLightUNetConfig(ModelConfig):
    channels: tuple[int, ...] = (16, 32, 64, 96, 160)
    num_classes: int = 1

    def __post_init__(self):
        if len(self.channels) != 5 or any(c % 2 for c in self.channels):
            # five stages; the attention gates' grouped convs take channel pairs
            raise ValueError(f"channels must be 5 even widths, got {list(self.channels)}")


VARIANTS = {name: UltraLightUNetConfig(name=name, channels=c) for name, c in (
    ("ultralightunet-t", (4, 8, 16, 24, 32)),
    ("ultralightunet-s", (8, 16, 32, 48, 80)),
    ("ultralightunet-b", (16, 32, 64, 96, 160)),
    ("ultralightunet-m", (32, 64, 128, 192, 320)),
    ("ultralightunet-l", (64, 128, 256, 384, 512)),
)}


def encoder_widths(cfg: UltraLightUNetConfig) -> list[tuple[int, int]]:
    """(in, out) of encoder1..encoder5."""
    c = cfg.channels
    return [(3, c[0])] + [(c[i], c[i + 1]) for i in range(4)]


def decoder_widths(cfg: UltraLightUNetConfig) -> list[tuple[int, int]]:
    """(in, out) of decoder1..decoder5."""
    c = cfg.channels
    return [(c[4], c[3]), (c[3], c[2]), (c[2], c[1]), (c[1], c[0]), (c[0], c[0])]


def ca_hidden(c: int, i: int) -> int:
    """Hidden width of CA{i+1} on c channels."""
    return max(1, c // CA_RATIOS[i])


def shuffle_groups(cin: int, cout: int) -> int:
    """Groups of the MKIR's channel shuffle: gcd(expanded width, output width)."""
    return math.gcd(EXPANSION * cin, cout)


def _batchnorm(spec, name, c):
    for field in ("weight", "bias", "running_mean", "running_var"):
        spec[f"{name}.{field}"] = (c,)


def _mkir_tensors(spec, name, cin, cout):
    e = EXPANSION * cin
    spec[f"{name}.pconv1.0.weight"] = (e, cin, 1, 1)
    _batchnorm(spec, f"{name}.pconv1.1", e)
    for j, k in enumerate(KERNELS):
        spec[f"{name}.multi_scale_dwconv.dwconvs.{j}.0.weight"] = (e, 1, k, k)
        _batchnorm(spec, f"{name}.multi_scale_dwconv.dwconvs.{j}.1", e)
    spec[f"{name}.pconv2.0.weight"] = (cout, e, 1, 1)
    _batchnorm(spec, f"{name}.pconv2.1", cout)
    if cin != cout:
        spec[f"{name}.conv1x1.weight"] = (cout, cin, 1, 1)


def _gag_tensors(spec, name, c):
    for branch in ("W_g", "W_x"):
        spec[f"{name}.{branch}.0.weight"] = (c // 2, 2, 3, 3)
        spec[f"{name}.{branch}.0.bias"] = (c // 2,)
        _batchnorm(spec, f"{name}.{branch}.1", c // 2)
    spec[f"{name}.psi.0.weight"] = (1, c // 2, 1, 1)
    spec[f"{name}.psi.0.bias"] = (1,)
    _batchnorm(spec, f"{name}.psi.1", 1)


def expected_tensors(cfg: UltraLightUNetConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a weights file with its shape, in the authors' state_dict order."""
    c, k = cfg.channels, cfg.num_classes
    spec: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout) in enumerate(encoder_widths(cfg)):
        _mkir_tensors(spec, f"encoder{i + 1}.0", cin, cout)
    for i, width in enumerate((c[3], c[2], c[1], c[0])):
        _gag_tensors(spec, f"AG{i + 1}", width)
    for i, (cin, cout) in enumerate(decoder_widths(cfg)):
        _mkir_tensors(spec, f"decoder{i + 1}.0", cin, cout)
    for i, width in enumerate((c[4], c[3], c[2], c[1], c[0])):
        h = ca_hidden(width, i)
        spec[f"CA{i + 1}.fc1.weight"] = (h, width, 1, 1)
        spec[f"CA{i + 1}.fc2.weight"] = (width, h, 1, 1)
    spec["SA.conv.weight"] = (1, 2, 7, 7)
    for i, width in enumerate((c[2], c[1], c[0], c[0])):  # out1..out3: deep-supervision heads
        spec[f"out{i + 1}.weight"] = (k, width, 1, 1)
        spec[f"out{i + 1}.bias"] = (k,)
    return spec
