"""The fast engine's plan: for one input size, every buffer preallocated and a flat list
of validated steps (npseg.ops.steps: shapes checked when the plan is built, none per frame).

A family's plan builder (npseg/models/<family>.py) creates a Plan, allocates its
buffers, appends steps and sets `output`. run() only calls the steps: no
allocation, no shape logic per frame.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


class Plan:
    """Buffers and steps for one input size; `input` [3, H, W] is written by the caller."""

    def __init__(self, h: int, w: int, in_channels: int = 3):
        self.input = np.zeros((in_channels, h, w), F32)
        self.steps: list = []
        self.output: np.ndarray | None = None

    @staticmethod
    def buffer(c: int, h: int, w: int) -> np.ndarray:
        return np.zeros((c, h, w), F32)

    def add(self, steps: list) -> None:
        self.steps += steps

    def run(self) -> np.ndarray:
        """Runs every step on the current `input`; returns `output` (overwritten by the next run)."""
        for step in self.steps:
            step()
        return self.output
