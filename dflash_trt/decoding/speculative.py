"""The DFlash speculative decoding loop, backend-agnostic and batched with ragged acceptance.

Each step: block = [x_start, MASK x (B-1)] where x_start is the newest committed token; one drafter pass
fills the mask positions; one target pass verifies the B tokens; the longest accepted prefix plus a
bonus token is emitted; both caches keep x_start and the accepted drafts (the bonus becomes the next
x_start). Invariant at the top of every step: target and drafter caches both hold exactly the tokens
before x_start. With no drafter the same loop runs blocks of one token: plain autoregressive decoding.

`SpeculativeBatch` is that step over a fixed number of rows: requests join rows (`add`, a prefill of those
rows only) and leave them (`remove`) between steps, which is in-flight batching; rows with no live request
ride along in the verify pass and commit nothing. `generate` is the same batch with every row added at once
and stepped until all finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dflash_trt.decoding.metrics import Generation
from dflash_trt.decoding.runners import Capacity, DrafterRunner, TargetRunner
from dflash_trt.decoding.sampling import SamplingParams, accept, first_token, propose
from dflash_trt.errors import UserError


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    params: SamplingParams | None = None  # this request's sampling (None: the batch's); its seed seeds the row


def check_requests(requests: list[Request], block_size: int, capacity: Capacity) -> None:
    """Refuse requests the target runner cannot hold, naming the request and the limit."""
    if len(requests) > capacity.max_batch:
        raise UserError(
            f"{len(requests)} requests in one batch; this target runner holds at most "
            f"{capacity.max_batch}: lower --batch-size"
        )
    for i, r in enumerate(requests):
        check_request(r, block_size, capacity.max_len, capacity.max_len_field, f"request {i}")


def check_request(r: Request, block_size: int, max_len: int, field: str, name: str = "request") -> None:
    """Refuse one request that does not fit `max_len` positions (prompt + output + one block)."""
    if not r.prompt:
        raise UserError(f"{name}: the prompt is empty; give at least one token")
    if r.max_new_tokens < 1:
        raise UserError(f"{name}: max_new_tokens is {r.max_new_tokens}; use 1 or more")
    need = len(r.prompt) + r.max_new_tokens + block_size
    if need > max_len:
        raise UserError(
            f"{name}: prompt of {len(r.prompt)} tokens + max_new_tokens {r.max_new_tokens} + block "
            f"{block_size} exceeds the target's {field} {max_len}; shorten the prompt "
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


class SpeculativeBatch:
    """Per-row decoding state over `batch` rows of up to `max_len` positions, advanced one step at a time.

    `on_tokens(row, new_tokens)` receives each row's committed output as it is produced. Rows sampling with
    the same parameters are sampled together; a request with its own seed samples from its own generator.
    """

    def __init__(
        self,
        target: TargetRunner,
        drafter: DrafterRunner | None,
        batch: int,
        max_len: int,
        block_size: int | None = None,
        params: SamplingParams = SamplingParams(),
        on_tokens: Callable[[int, list[int]], None] | None = None,
    ) -> None:
        self.target, self.drafter = target, drafter
        self.block = resolve_block_size(drafter, block_size)
        self.batch, self.max_len, self.params = batch, max_len, params
        self.device = target.device
        capacity = target.capacity
        if batch > capacity.max_batch:
            raise UserError(f"max batch {batch}: this target runner holds at most {capacity.max_batch} rows; lower it")
        if max_len > capacity.max_len:
            raise UserError(
                f"max length {max_len}: above the target's {capacity.max_len_field} {capacity.max_len}; lower it"
            )
        self.generator = self._generator(params.seed)
        self.emit = on_tokens or (lambda row, toks: None)
        target.reset(batch, max_len)
        if drafter is not None:
            drafter.reset(batch, max_len)
        self.requests: list[Request | None] = [None] * batch
        self.gens: list[Generation | None] = [None] * batch
        self.active = [False] * batch
        self.steps = 0
        self._row_sampling: list[tuple[SamplingParams, torch.Generator | None]] = [(params, self.generator)] * batch
        self._t_decode = [0.0] * batch
        self.x_start = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.tokens = torch.full(
            (batch, self.block), drafter.mask_token_id if drafter else 0, dtype=torch.long, device=self.device
        )

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None

    def free_rows(self) -> list[int]:
        return [row for row in range(self.batch) if self.requests[row] is None]

    def active_rows(self) -> list[int]:
        return [row for row in range(self.batch) if self.active[row]]

    def check(self, request: Request, name: str = "request") -> None:
        """Refuse a request that does not fit this batch's rows (see `check_request`)."""
        capacity = self.target.capacity
        limit, field = (
            (self.max_len, "max_len") if self.max_len < capacity.max_len else (capacity.max_len, capacity.max_len_field)
        )
        check_request(request, self.block, limit, field, name)

    @torch.inference_mode()
    def add(self, requests: list[Request], rows: list[int] | None = None) -> None:
        """Start `requests` in `rows` (default: rows 0..n-1 of a fresh batch): prefill those rows only, emit each
        one's first token. Other rows keep decoding at the next step."""
        whole = rows is None
        rows = list(range(len(requests))) if whole else list(rows)
        for row, r in zip(rows, requests):
            self.requests[row], self.gens[row] = r, Generation(block_size=self.block)
            params = r.params or self.params
            gen = (
                self._generator(params.seed) if r.params is not None and r.params.seed is not None else (self.generator)
            )
            self._row_sampling[row] = (params, gen)
        t0 = time.perf_counter()
        prompts = [r.prompt for r in requests]
        logits, features = self.target.prefill(prompts) if whole else self.target.prefill(prompts, rows)
        if self.drafter is not None:
            n = torch.tensor([len(p) for p in prompts], device=self.device)
            if whole:
                self.drafter.append_context(features, n)
            else:
                self.drafter.restart(rows)
                self.drafter.append_context(features, n, rows)
        first = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        for (params, gen), idx in self._groups(rows):
            first[idx] = first_token(logits[idx] if idx is not None else logits, params, gen)
        ttft = time.perf_counter() - t0
        self.x_start[torch.tensor(rows, device=self.device)] = first
        for row, tok in zip(rows, first.tolist()):
            self.gens[row].ttft_s = ttft
            self.active[row] = _extend(self.gens[row], self.requests[row], [tok], self.emit, row)
        now = time.perf_counter()
        for row in rows:
            self._t_decode[row] = now

    def remove(self, row: int) -> Generation | None:
        """Free `row` (finished, cancelled or disconnected); it rides along committing nothing until reused."""
        gen = self.gens[row]
        self.requests[row], self.gens[row], self.active[row] = None, None, False
        self._row_sampling[row] = (self.params, self.generator)
        return gen

    def _groups(self, rows: list[int]) -> list[tuple[tuple[SamplingParams, torch.Generator | None], Tensor | None]]:
        """Rows of `rows` that sample alike, as (sampling, index into rows); index None = all rows alike."""
        keys: dict = {}
        for i, row in enumerate(rows):
            params, gen = self._row_sampling[row]
            key = ("greedy",) if params.greedy else (params, id(gen))
            keys.setdefault(key, (params, gen, []))[2].append(i)
        if len(keys) <= 1:
            params, gen, _ = next(iter(keys.values()), (self.params, self.generator, None))
            return [((params, gen), None)]
        return [((p, g), torch.tensor(idx, device=self.device)) for p, g, idx in keys.values()]

    @torch.inference_mode()
    def step(self) -> list[int]:
        """One draft + verify + commit over every row; returns the rows that finished in this step."""
        live = self.active_rows()
        if not live:
            return []
        tokens, block = self.tokens, self.block
        tokens[:, 0] = self.x_start
        if block > 1:  # the drafter sees [last token, MASK ...]: clear the previous step's drafts
            tokens[:, 1:] = self.drafter.mask_token_id
        groups = self._groups(live)
        if len(groups) == 1:  # every live row samples alike: the whole batch in one call (idle rows ride along)
            (params, gen), _ = groups[0]
            q = None
            if block > 1:
                tokens[:, 1:], q = self.drafter.draft_and_propose(tokens, params, gen)
            accepted, self.x_start, features = self.target.verify_and_accept(tokens, q, params, gen)
        else:
            live_idx = torch.tensor(live, device=self.device)
            qs = {}
            if block > 1:
                draft_logits = self.drafter.draft(tokens)
                for k, ((params, gen), idx) in enumerate(groups):
                    rows = live_idx[idx]
                    tokens[rows, 1:], qs[k] = propose(draft_logits[rows], params, gen)
            logits, features = self.target.verify(tokens)
            accepted = torch.zeros(self.batch, dtype=torch.long, device=self.device)
            next_token = self.x_start.clone()
            for k, ((params, gen), idx) in enumerate(groups):
                rows = live_idx[idx]
                accepted[rows], next_token[rows] = (
                    t.to(torch.long) for t in accept(tokens[rows, 1:], qs.get(k), logits[rows], params, gen)
                )
            self.x_start = next_token
        # Commit x_start + accepted drafts, never past the request's length limit (keeps cache writes
        # within max_len); finished and free rows ride along in the batch and commit nothing.
        n_accepted, block_tokens, next_tokens = accepted.tolist(), tokens.tolist(), self.x_start.tolist()
        n_commit = [
            min(n + 1, r.max_new_tokens - len(g.tokens)) if on else 0
            for n, r, g, on in zip(n_accepted, self.requests, self.gens, self.active)
        ]
        n_commit = torch.tensor(n_commit, device=self.device)
        self.target.commit(n_commit)
        if self.drafter is not None:
            self.drafter.append_context(features, n_commit)
        self.steps += 1
        now = time.perf_counter()
        finished = []
        for row in live:
            n = n_accepted[row]
            new = block_tokens[row][1 : n + 1] + [next_tokens[row]]
            self.active[row] = _extend(self.gens[row], self.requests[row], new, self.emit, row, step=True)
            self.gens[row].decode_s = now - self._t_decode[row]
            if not self.active[row]:
                finished.append(row)
        return finished


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
    max_len = max(len(r.prompt) + r.max_new_tokens for r in requests) + block
    batch = SpeculativeBatch(target, drafter, len(requests), max_len, block, params, on_tokens)
    batch.add(requests)
    while batch.active_rows():
        batch.step()
    return list(batch.gens)


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
