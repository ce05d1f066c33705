"""Sampling and acceptance rules: greedy prefix match, and lossless rejection sampling.

Rejection sampling (Leviathan et al.; Chen et al.): draft token d_i ~ q_i is accepted with probability
min(1, p_i(d_i) / q_i(d_i)); at the first rejection the token is resampled from normalize(max(0, p_i - q_i));
when every draft is accepted the bonus token comes from p at the block's last position. The emitted tokens
are then distributed exactly as target samples. Temperature, top-k and top-p shape p and q identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dflash_trt.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UserError(f"--temperature is {self.temperature}; use 0 (greedy) or a positive value")
        if self.top_k < 0:
            raise UserError(f"--top-k is {self.top_k}; use 0 (off) or a positive count")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p is {self.top_p}; use a value in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: Tensor, params: SamplingParams) -> Tensor:
    """Distribution over the vocab after temperature, top-k, then top-p (nucleus), in fp32."""
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = scores.topk(params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = scores.softmax(-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of probs [..., V]."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def first_token(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> Tensor:
    """The token after the prompt, from the prefill's last logits [b, V]."""
    return logits.argmax(-1) if params.greedy else sample(probabilities(logits, params), generator)


def propose(
    draft_logits: Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[Tensor, Tensor | None]:
    """Draft tokens [b, B-1] and their proposal distribution q (None when greedy)."""
    if params.greedy:
        return draft_logits.argmax(-1), None
    q = probabilities(draft_logits, params)
    return sample(q, generator), q


def accept(
    drafts: Tensor, q: Tensor | None, target_logits: Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Accepted draft count [b] and the bonus/correction token [b].

    drafts [b, B-1] were proposed for block positions 1..B-1; target_logits [b, B, V] are the target's
    predictions after block positions 0..B-1 (so position i-1's logits judge draft i).
    """
    rows = torch.arange(drafts.shape[0], device=drafts.device)
    n_drafts = drafts.shape[1]
    if params.greedy:
        posterior = target_logits.argmax(-1)
        accepted = (drafts == posterior[:, :n_drafts]).int().cumprod(-1).sum(-1)
        return accepted, posterior[rows, accepted]
    p = probabilities(target_logits, params)  # [b, B, V]
    if n_drafts:
        p_d = p[:, :n_drafts].gather(-1, drafts[..., None])[..., 0]
        q_d = q.gather(-1, drafts[..., None])[..., 0]
        u = torch.rand(q_d.shape, generator=generator, device=q_d.device)
        accepted = (u * q_d < p_d).int().cumprod(-1).sum(-1)
        q = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # no proposal at the last position
    else:
        accepted = torch.zeros(drafts.shape[0], dtype=torch.long, device=drafts.device)
        q = torch.zeros_like(p)
    p_at, q_at = p[rows, accepted], q[rows, accepted]
    residual = (p_at - q_at).clamp_min(0)
    total = residual.sum(-1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp_min(torch.finfo(total.dtype).tiny), p_at)
    return accepted, sample(residual, generator)
