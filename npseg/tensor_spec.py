"""Every tensor an UltraSeg weights file must hold, with its shape.

The names are the published checkpoint's (best-ultraseg-130K.pth), so the
upstream file converts without a name map and the torch model uses them too.
BatchNorm's `num_batches_tracked` counters are training state and not stored.
"""
from __future__ import annotations

from .config import UltraSegConfig


def _conv(spec, name, cout, cin, k, groups=1):
    spec[f"{name}.weight"] = (cout, cin // groups, k, k)
    spec[f"{name}.bias"] = (cout,)


def _affine(spec, name, c):
    spec[f"{name}.weight"] = (c,)
    spec[f"{name}.bias"] = (c,)


def _batchnorm(spec, name, c):
    _affine(spec, name, c)
    spec[f"{name}.running_mean"] = (c,)
    spec[f"{name}.running_var"] = (c,)


def _edb(spec, name, c, learned_scale):
    if learned_scale:
        spec[f"{name}.res_weight"] = ()
    for i in range(3):
        _conv(spec, f"{name}.dilated_convs.{i}", c // 3, c, 3, groups=c // 3)
    _conv(spec, f"{name}.fusion", c, c, 1)


def _gsa(spec, name, din, dout, grid):
    q = din // 4
    for i in range(1, 5):
        spec[f"{name}.share_space{i}"] = (1, q, grid, grid)
    for i in range(1, 5):
        _conv(spec, f"{name}.conv{i}.0", q, q, 3, groups=q)
        _conv(spec, f"{name}.conv{i}.2", q, q, 1)
    _affine(spec, f"{name}.norm1", din)
    _affine(spec, f"{name}.norm2", din)
    _conv(spec, f"{name}.ldw.0", din, din, 3, groups=din)
    _conv(spec, f"{name}.ldw.2", dout, din, 1)


def _down(spec, name, c):
    _batchnorm(spec, f"{name}.bn", c)
    _conv(spec, f"{name}.conv", c, c, 2)


def _merge(spec, name, c, boundary):
    spec[f"{name}.region_weight"] = ()
    if boundary:
        spec[f"{name}.boundary_weight"] = ()
    if c > 16:
        hidden = max(c // 8, 4)
        _conv(spec, f"{name}.feature_adapter.0", hidden, c, 1)
        _conv(spec, f"{name}.feature_adapter.2", c, hidden, 1)


def expected_tensors(cfg: UltraSegConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a weights file for `cfg`."""
    c0, c1, c2, c3, c4 = cfg.widths
    g = cfg.gsa_grid
    s: dict[str, tuple[int, ...]] = {}
    if cfg.fusion:
        s["attention_alpha"] = ()
    _conv(s, "encoder1.0", c0, 3, 3)
    _conv(s, "encoder2.0", c1, c0, 3)
    _conv(s, "encoder3.0", c2, c1, 3)
    _edb(s, "encoder3.1", c2, cfg.learned_res_scale)
    _edb(s, "encoder3.2", c2, cfg.learned_res_scale)
    _gsa(s, "encoder4.0", c2, c3, g)
    if cfg.fusion:
        _conv(s, "multiscale_fusion.transforms.0", c3, c2, 1)
        _conv(s, "multiscale_fusion.spatial_attention.0", c3 // 4, 2 * c3, 3)
        _batchnorm(s, "multiscale_fusion.spatial_attention.1", c3 // 4)
        _conv(s, "multiscale_fusion.spatial_attention.3", 2, c3 // 4, 1)
    _conv(s, "bottleneck", c4, c3, 3)
    _down(s, "Down1", c0)
    _down(s, "Down2", c1)
    _down(s, "Down3", c2)
    _merge(s, "merge1", c0, boundary=True)
    _merge(s, "merge2", c1, boundary=True)
    _merge(s, "merge3", c2, boundary=True)
    _merge(s, "merge4", c3, boundary=False)
    _gsa(s, "decoder1.0", c4, c3, g)
    _gsa(s, "decoder2.0", c3, c2, g)
    _gsa(s, "decoder3.0", c2, c1, g)
    _conv(s, "decoder4.0", c0, c1, 3)
    _conv(s, "pred1.conv", 1, c3, 1)
    for i, c in ((1, c2), (2, c1), (3, c0)):
        _conv(s, f"gate{i}.conv1", 1, c, 1)
        _conv(s, f"gate{i}.conv2", 1, c, 1)
    for i, c in enumerate((c0, c1, c2, c3), 1):
        _affine(s, f"ebn{i}", c)
    for i, c in enumerate((c3, c2, c1, c0), 1):
        _affine(s, f"dbn{i}", c)
    _conv(s, "final.0", cfg.out_ch, c0, 1)
    return s
