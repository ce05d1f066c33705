"""The DFlash speculative decoding loop, backend-agnostic and batched with ragged acceptance.

Each step: block = [x_start, MASK x (B-1)] where x_start is the newest committed token; one drafter pass
fills the mask positions; one target pass verifies the B tokens; the longest accepted prefix plus a
bonus token is emitted; both caches keep x_start and the accepted drafts (the bonus becomes the next
x_start). Invariant at the top of every step: target and drafter caches both hold exactly the tokens
before x_start. With no drafter the same loop runs blocks of one token: plain autoregressive decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dflash_trt.decoding.metrics import Generation
from dflash_trt.decoding.runners import Capacity, DrafterRunner, TargetRunner
from dflash_trt.decoding.sampling import SamplingParams, first_token, propose
from dflash_trt.errors import UserError


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()


def check_requests(requests: list[Request], block_size: int, capacity: Capacity) -> None:
    """Refuse requests the target runner cannot hold, naming the request and the limit."""
    if len(requests) > capacity.max_batch:
        raise UserError(f"{len(requests)} requests in one batch; this target runner holds at most "
                        f"{capacity.max_batch}: lower --batch-size")
    for i, r in enumerate(requests):
        if not r.prompt:
            raise UserError(f"request {i}: the prompt is empty; give at least one token")
        if r.max_new_tokens < 1:
            raise UserError(f"request {i}: max_new_tokens is {r.max_new_tokens}; use 1 or more")
        need = len(r.prompt) + r.max_new_tokens + block_size
        if need > capacity.max_len:
            raise UserError(
                f"request {i}: prompt of {len(r.prompt)} tokens + max_new_tokens {r.max_new_tokens} + block "
                f"{block_size} exceeds the target's {capacity.max_len_field} {capacity.max_len}; shorten the prompt "
                "or lower --max-new-tokens"
            )


def resolve_block_size(drafter: DrafterRunner | None, block_size: int | None) -> int:
    """Block size to run: the drafter's trained size by default, never above it; 1 without a drafter."""
    if drafter is None:
        return 1
    if block_size is None:
        return drafter.block_size
    if not 1 <= block_size <= drafter.block_size:
        raise UserError(
            f"--block-size is {block_size}; this drafter was trained with block_size {drafter.block_size}, "
            f"use 1..{drafter.block_size}"
        )
    return block_size


@torch.inference_mode()
def generate(
    target: TargetRunner,
    drafter: DrafterRunner | None,
    requests: list[Request],
    params: SamplingParams = SamplingParams(),
    block_size: int | None = None,
    on_tokens: Callable[[int, list[int]], None] | None = None,
) -> list[Generation]:
    """Generate for a batch of requests. `on_tokens(row, new_tokens)` streams output as it is committed.

    Blocks, the sampling generator and commit counts live on the target's device; per step only the
    block's tokens, accepted lengths and next tokens ([b, B] and [b] integers) cross to the host.
    """
    block = resolve_block_size(drafter, block_size)
    check_requests(requests, block, target.capacity)
    device = target.device
    batch = len(requests)
    max_len = max(len(r.prompt) + r.max_new_tokens for r in requests) + block
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    target.reset(batch, max_len)
    if drafter is not None:
        drafter.reset(batch, max_len)
    gens = [Generation(block_size=block) for _ in requests]
    emit = on_tokens or (lambda row, toks: None)

    t0 = time.perf_counter()
    logits, features = target.prefill([r.prompt for r in requests])
    if drafter is not None:
        drafter.append_context(features, torch.tensor([len(r.prompt) for r in requests], device=device))
    x_start = first_token(logits, params, generator)
    ttft = time.perf_counter() - t0
    active = [True] * batch
    for row, (gen, first) in enumerate(zip(gens, x_start.tolist())):
        gen.ttft_s = ttft
        active[row] = _extend(gen, requests[row], [first], emit, row)

    t_decode = time.perf_counter()
    tokens = torch.full((batch, block), drafter.mask_token_id if drafter else 0, dtype=torch.long, device=device)
    while any(active):
        tokens[:, 0] = x_start
        q = None
        if block > 1:
            tokens[:, 1:], q = propose(drafter.draft(tokens), params, generator)
        accepted, x_start, features = target.verify_and_accept(tokens, q, params, generator)
        # Commit x_start + accepted drafts, never past the request's length limit (keeps cache writes
        # within max_len); finished rows ride along in the batch and commit nothing.
        n_accepted, block_tokens, next_tokens = accepted.tolist(), tokens.tolist(), x_start.tolist()
        n_commit = [min(n + 1, r.max_new_tokens - len(g.tokens)) if on else 0
                    for n, r, g, on in zip(n_accepted, requests, gens, active)]
        n_commit = torch.tensor(n_commit, device=device)
        target.commit(n_commit)
        if drafter is not None:
            drafter.append_context(features, n_commit)
        now = time.perf_counter()
        for row in [r for r in range(batch) if active[r]]:
            n = n_accepted[row]
            new = block_tokens[row][1 : n + 1] + [next_tokens[row]]
            active[row] = _extend(gens[row], requests[row], new, emit, row, step=True)
            gens[row].decode_s = now - t_decode
    return gens


def _extend(gen: Generation, request: Request, new: list[int], emit: Callable, row: int, step: bool = False) -> bool:
    """Append newly committed tokens, cutting at a stop token or the length limit. Returns still-active."""
    room = request.max_new_tokens - len(gen.tokens)
    kept = new[:room]
    stops = [i for i, tok in enumerate(kept) if tok in request.stop_token_ids]
    if stops:
        kept = kept[: stops[0] + 1]
    gen.tokens += kept
    if step:
        gen.step_lengths.append(len(kept))
    emit(row, kept)
    if stops:
        gen.finish_reason = "stop"
    elif len(gen.tokens) >= request.max_new_tokens:
        gen.finish_reason = "length"
    return not gen.finish_reason
