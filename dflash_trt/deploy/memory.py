"""Does a trtllm-serve DFlash config fit the GPU? Per-rank bytes on top of the build planner.

Weights and the target KV cache come from `engine.plan` (one computation: the same sharding rules `convert` and
`build --dry-run` use). What TensorRT-LLM's PyTorch DFlash adds is planned here:

- the drafter's context buffer, a dense worst-case allocation (TensorRT-LLM issue 16005):
  max_batch x (max_ctx + block) x draft layers x 2 (K, V) x kv heads per rank x head_dim x 2 bytes (bf16), with
  max_ctx = min(max_seq_len, the drafter's max_position_embeddings);
- the drafter shares the target's embedding and LM head (the planner counts a private copy for our engines; it is
  taken out);
- activations of the largest forward, max_num_tokens tokens (the planner's estimate for that many tokens), plus the
  fp32 verify logits of max_batch x block positions;
- a fixed runtime reserve (CUDA context, CUDA graphs, allocator slack).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dflash_trt.errors import UserError

GIB = 1 << 30
# Nominal HBM per GPU (GB as sold: 1e9 bytes). What a process can allocate is a little less; the budget below
# keeps a margin for that.
GPU_MEMORY = {"h100": 80e9, "h200": 141e9, "b200": 180e9, "b300": 288e9}
USABLE_FRACTION = 0.90  # of the nominal memory, for everything this plan counts
RUNTIME_RESERVE = 4 * GIB  # CUDA context, cuBLAS workspaces, CUDA graphs, allocator slack
MAX_NUM_TOKENS = 8192  # TensorRT-LLM's default max_num_tokens: the largest forward


@dataclass(frozen=True)
class ServePlan:
    """Bytes per rank of a trtllm-serve DFlash deployment (every rank alike: the rules shard evenly)."""

    gpu: str
    tp: int
    max_batch: int
    max_seq_len: int
    block_size: int
    weights: int
    target_kv: int
    draft_context: int
    activations: int
    reserve: int = RUNTIME_RESERVE

    @property
    def total(self) -> int:
        return self.weights + self.target_kv + self.draft_context + self.activations + self.reserve

    @property
    def budget(self) -> int:
        return int(GPU_MEMORY[self.gpu] * USABLE_FRACTION)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def table(self) -> list[tuple[str, int]]:
        return [
            ("weights (target + drafter)", self.weights),
            ("target KV cache", self.target_kv),
            ("drafter context buffer (dense, TRT-LLM #16005)", self.draft_context),
            ("activations + verify logits", self.activations),
            ("runtime reserve", self.reserve),
            ("total", self.total),
            (f"budget ({USABLE_FRACTION:.0%} of {self.gpu} {GPU_MEMORY[self.gpu] / 1e9:.0f} GB)", self.budget),
        ]


def draft_context_bytes(pair, max_batch: int, max_seq_len: int, block: int, tp: int) -> int:
    """TensorRT-LLM's dense drafter context buffer per rank (issue 16005), bf16."""
    from dflash_trt.engine.plan import kv_per_rank

    d = pair.drafter
    max_ctx = min(max_seq_len, d.max_position_embeddings)
    return max_batch * (max_ctx + block) * d.num_layers * 2 * kv_per_rank(d, tp) * d.head_dim * 2


def plan_serve(pair, gpu: str, tp: int, max_batch: int, max_seq_len: int, block: int) -> ServePlan:
    """The per-rank memory of serving `pair` with trtllm-serve in bf16 (see the module docstring)."""
    from dflash_trt.checkpoint.sharding import pad_to_multiple
    from dflash_trt.engine.plan import make_build_plan
    from dflash_trt.engine.recipe import BuildRecipe

    if gpu not in GPU_MEMORY:
        raise UserError(f"--gpu is {gpu}; use one of {', '.join(GPU_MEMORY)}")
    recipe = BuildRecipe(
        max_batch_size=max_batch,
        max_input_len=max(1, max_seq_len - block),
        max_seq_len=max_seq_len,
        block_size=block,
        dtype="bf16",
        tp_size=tp,
    )
    rank = make_build_plan(pair, recipe, "deploy").memory[0]
    t = pair.target
    shared = (1 if t.tie_word_embeddings else 2) * (pad_to_multiple(t.vocab_size, tp) // tp) * t.hidden_size * 2
    forward = BuildRecipe(
        max_batch_size=1,
        max_input_len=MAX_NUM_TOKENS,
        max_seq_len=MAX_NUM_TOKENS + block,
        block_size=block,
        dtype="bf16",
        tp_size=tp,
    )
    pair_for_forward = dataclasses.replace(
        pair,
        target=dataclasses.replace(t, max_position_embeddings=max(t.max_position_embeddings, MAX_NUM_TOKENS + block)),
    )
    activations = make_build_plan(pair_for_forward, forward, "deploy").memory[0].activations
    activations += max_batch * block * t.vocab_size * 4  # fp32 verify logits
    return ServePlan(
        gpu,
        tp,
        max_batch,
        max_seq_len,
        block,
        rank.target_weights + rank.drafter_weights - shared,
        rank.target_kv,
        draft_context_bytes(pair, max_batch, max_seq_len, block, tp),
        activations,
    )


def fit(
    pair, gpu: str, tp: int, max_batch: int, max_seq_len: int, block: int, batch_given: bool, seq_given: bool
) -> tuple[ServePlan, list[str]]:
    """A plan that fits: values the user chose are refused when they do not fit; defaults are shrunk (max batch
    halved first, then max_seq_len) and each shrink is reported."""
    plan = plan_serve(pair, gpu, tp, max_batch, max_seq_len, block)
    if plan.fits:
        return plan, []
    floor = plan_serve(pair, gpu, tp, 1, min(max_seq_len, 2048), block)
    if not floor.fits:
        raise UserError(
            f"--gpu {gpu} --tp {tp}: the weights alone need {plan.weights / GIB:.1f} GiB per rank and even "
            f"batch 1 x {floor.max_seq_len} tokens does not fit {plan.budget / GIB:.1f} GiB; raise --tp "
            "or use a larger GPU"
        )
    notes = []
    if not batch_given:
        b = max_batch
        while b > 1 and not plan.fits:
            b //= 2
            plan = plan_serve(pair, gpu, tp, b, max_seq_len, block)
        if b != max_batch:
            notes.append(f"max batch shrunk from {max_batch} to {b} to fit {gpu}")
    if not plan.fits and not seq_given:
        s = max_seq_len
        while s > 256 and not plan.fits:
            s //= 2
            plan = plan_serve(pair, gpu, tp, plan.max_batch, s, block)
        if s != max_seq_len:
            notes.append(f"max_seq_len shrunk from {max_seq_len} to {s} to fit {gpu}")
    if not plan.fits:
        largest = max(
            (
                b
                for b in (1 << k for k in range(12))
                if b <= max_batch and plan_serve(pair, gpu, tp, b, plan.max_seq_len, block).fits
            ),
            default=0,
        )
        hint = f"the largest power-of-two --max-batch that fits is {largest}" if largest else "lower --max-seq-len"
        raise UserError(
            f"--max-batch {plan.max_batch} x --max-seq-len {plan.max_seq_len} needs "
            f"{plan.total / GIB:.1f} GiB per rank on {gpu} (budget {plan.budget / GIB:.1f} GiB; target KV "
            f"{plan.target_kv / GIB:.1f}, drafter context buffer {plan.draft_context / GIB:.1f}); {hint}, "
            "or raise --tp"
        )
    return plan, notes
