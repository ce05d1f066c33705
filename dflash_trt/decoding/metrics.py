"""Per-request and aggregated decoding metrics (z-lab definitions).

tau: tokens committed per target verify step, bonus included (1 <= tau <= B), averaged per request and
then over requests (macro average). TPOT: decode time (prefill excluded) / output tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Generation:
    """One request's output and timings."""

    tokens: list[int] = field(default_factory=list)
    step_lengths: list[int] = field(default_factory=list)  # tokens produced per verify step
    block_size: int = 1
    ttft_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""  # "stop" | "length"

    @property
    def tau(self) -> float:
        return sum(self.step_lengths) / len(self.step_lengths) if self.step_lengths else 0.0

    @property
    def tpot_s(self) -> float:
        return self.decode_s / len(self.tokens) if self.tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        total = self.ttft_s + self.decode_s
        return len(self.tokens) / total if total > 0 else 0.0

    def histogram(self) -> list[int]:
        """Counts of steps that produced 1..B tokens (index 0 = 1 token)."""
        counts = [0] * self.block_size
        for n in self.step_lengths:
            counts[n - 1] += 1
        return counts

    def position_acceptance(self) -> list[float]:
        """Fraction of steps whose draft at block position k (1..B-1) was accepted."""
        steps = len(self.step_lengths)
        return [sum(n > k for n in self.step_lengths) / steps if steps else 0.0 for k in range(1, self.block_size)]

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "tau": self.tau,
            "tpot_s": self.tpot_s,
            "tokens_per_s": self.tokens_per_s,
            "histogram": self.histogram(),
            "position_acceptance": self.position_acceptance(),
        }


def summarize(gens: list[Generation], wall_s: float | None = None) -> dict:
    """Aggregate over requests: macro tau, pooled per-position acceptance and histogram, mean TTFT/TPOT."""
    n = len(gens)
    block = max(g.block_size for g in gens)
    hist = [sum(g.histogram()[i] if i < g.block_size else 0 for g in gens) for i in range(block)]
    steps = sum(hist)
    out_tokens = sum(len(g.tokens) for g in gens)
    summary = {
        "requests": n,
        "output_tokens": out_tokens,
        "block_size": block,
        "tau": sum(g.tau for g in gens) / n,
        "position_acceptance": [sum(hist[k:]) / steps if steps else 0.0 for k in range(1, block)],
        "histogram": hist,
        "ttft_s": sum(g.ttft_s for g in gens) / n,
        "tpot_s": sum(g.tpot_s for g in gens) / n,
    }
    if wall_s is not None:
        summary["wall_s"] = wall_s
        summary["tokens_per_s"] = out_tokens / wall_s if wall_s > 0 else 0.0
    return summary


def format_summary(s: dict) -> str:
    """The one-line metrics summary the CLI prints."""
    line = (
        f"requests={s['requests']} tokens={s['output_tokens']} tau={s['tau']:.2f} "
        f"ttft={s['ttft_s'] * 1e3:.0f}ms tpot={s['tpot_s'] * 1e3:.1f}ms"
    )
    if "tokens_per_s" in s:
        line += f" tok/s={s['tokens_per_s']:.1f}"
    if s["block_size"] > 1:
        line += " accept@pos=" + ",".join(f"{a:.2f}" for a in s["position_acceptance"])
    return line
