"""The UltraSeg family as data: one typed config, one tiny factory per variant.

Shared by the trainer (which builds the torch model from it) and by npseg
(which checks weight files against it and builds its plan from it); it imports
nothing heavier than the standard library.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ARCHITECTURE = "ultraseg"


@dataclass(frozen=True)
class UltraSegConfig:
    """Widths and flags of one UltraSeg variant (see shared ARCHITECTURE.md)."""

    name: str
    widths: tuple[int, int, int, int, int]  # c0..c4
    fusion: bool  # AGF + SSA between encoder and decoder (130K and wider)
    learned_res_scale: bool  # EDB residual scale learned (130K) or constant 0.1 (108K)
    out_ch: int = 2
    gsa_grid: int = 8  # side of the learned share_space tensors in GSA

    def __post_init__(self):
        c0, c1, c2, c3, c4 = self.widths
        if c2 % 3:
            raise ValueError(f"c2={c2} must be divisible by 3 (EDB splits it in three)")
        for c in (c2, c3, c4):
            if c % 4:
                raise ValueError(f"GSA input width {c} must be divisible by 4")
        if self.out_ch < 1:
            raise ValueError(f"out_ch must be >= 1, got {self.out_ch}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UltraSegConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; expected a subset of {sorted(known)}")
        d = dict(d)
        d["widths"] = tuple(int(c) for c in d["widths"])
        if len(d["widths"]) != 5:
            raise ValueError(f"config widths must have 5 entries, got {len(d['widths'])}")
        return cls(**d)


def ultraseg_108k(out_ch: int = 2) -> UltraSegConfig:
    return UltraSegConfig("ultraseg-108k", (8, 16, 48, 64, 96), fusion=False, learned_res_scale=False, out_ch=out_ch)


def ultraseg_130k(out_ch: int = 2) -> UltraSegConfig:
    return UltraSegConfig("ultraseg-130k", (8, 16, 48, 64, 96), fusion=True, learned_res_scale=True, out_ch=out_ch)


def ultraseg_500k(out_ch: int = 2) -> UltraSegConfig:
    return UltraSegConfig("ultraseg-500k", (16, 32, 96, 128, 192), fusion=True, learned_res_scale=True, out_ch=out_ch)


def ultraseg_1m(out_ch: int = 2) -> UltraSegConfig:
    return UltraSegConfig("ultraseg-1m", (24, 48, 144, 192, 288), fusion=True, learned_res_scale=True, out_ch=out_ch)


def ultraseg_4m(out_ch: int = 2) -> UltraSegConfig:
    return UltraSegConfig("ultraseg-4m", (48, 96, 288, 384, 576), fusion=True, learned_res_scale=True, out_ch=out_ch)


VARIANTS = {
    f().name: f for f in (ultraseg_108k, ultraseg_130k, ultraseg_500k, ultraseg_1m, ultraseg_4m)
}
