"""Which block size, or plain decoding, maximises expected tokens/s: the drafter's per-position acceptance
against the step costs measured on this machine.

A DFlash step at block size B (a drafter pass, a B-token verify with its acceptance, the drafter's context update)
commits 1 + sum_{k<B} P(accepted >= k) tokens on average; a plain decoding step (a one-token verify) commits one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ACCEPTANCE_FILE = "acceptance.json"  # in a drafter (or engine) directory: {"position_acceptance": [...], ...}


@dataclass(frozen=True)
class StepCosts:
    """Milliseconds of a plain decoding step, and per block size B of a DFlash step."""

    decode_ms: float
    step_ms: dict[int, float]


def tokens_per_step(acceptance: Sequence[float], block: int) -> float:
    """Expected committed tokens per step at `block`; acceptance[k-1] = P(accepted >= k), measured at a block
    size of at least `block` (a smaller block is assumed to accept its first positions alike)."""
    if block - 1 > len(acceptance):
        raise ValueError(f"acceptance covers blocks up to {len(acceptance) + 1}, not {block}")
    return 1.0 + sum(acceptance[: block - 1])


@dataclass(frozen=True)
class Choice:
    block: int | None  # None: plain decoding is expected to be fastest
    speedups: dict[int, float]  # expected DFlash tokens/s over plain decoding, per block size
    ms_per_token: float  # expected at `block` (or of plain decoding): what backends are compared by

    def describe(self) -> str:
        best = max(self.speedups, key=self.speedups.get)
        if self.block is None:
            return f"autoregressive decoding (DFlash expected at best {self.speedups[best]:.2f}x, at B={best})"
        return f"DFlash B={self.block} (expected {self.speedups[self.block]:.2f}x autoregressive speed)"


def choose_block(acceptance: Sequence[float], costs: StepCosts) -> Choice:
    """The block size with the highest expected speed-up over plain decoding, or None when none exceeds 1."""
    speedups = {
        b: costs.decode_ms * tokens_per_step(acceptance, b) / costs.step_ms[b]
        for b in sorted(costs.step_ms)
        if b - 1 <= len(acceptance)
    }
    best = max(speedups, key=speedups.get)
    block = best if speedups[best] > 1.0 else None
    return Choice(block, speedups, costs.decode_ms / speedups[block] if block else costs.decode_ms)
