"""DFlash2 drafter (z-lab `DFlash2DraftModel`, PyPI `dflash` 0.1.0): the v1 drafter plus grouped dynamic
causal convolutions around every sublayer and a candidate selector over the draft's top-k tokens.

What z-lab's implementation computes (read from `dflash/model.py` of the 0.1.0 wheel; the MLX twin in
`model_mlx.py` computes the same):

1. Everything of v1 stays: fused context c = hidden_norm(fc(features)) injected as K/V through every
   layer's own k/v projections; block `[x_start, MASK x (B-1)]` at absolute positions start..start+B-1;
   the target's embedding and LM head. Two z-lab keys apply to both versions and matter for DFlash2:
   the block embedding is `embed(ids) * input_embedding_scale`, and the LM-head logits become
   `logits * output_multiplier`, then `cap * tanh(logits / cap)` when `final_logit_softcapping` > 0.

2. Grouped dynamic causal conv (`GroupedDynamicCausalConv`), one for attention and one for the MLP of
   every layer. Weights: `base_kernel` [2, K, H] (a static per-channel kernel for the "prepare" and the
   "finish" pass) and `kernel_projection` H -> 2*K*G without bias (G = H / conv_group_size). For a
   sublayer f (attention or MLP) and its normed input h = norm(x) [b, t, H]:

       d = kernel_projection(h).view(b, t, 2, K, G)        # dynamic taps, computed once from h
       u = conv(h, d[:, :, 0], base_kernel[0])             # "prepare"
       y = conv(f(u), d[:, :, 1], base_kernel[1])          # "finish": same taps' source h, on f's output
       x = x + y
       conv(z, d, w)[t, c] = sum_{o < K} (w[o, c] + d[t, o, c // group]) * z[t - o, c],  z[t < 0] = 0

   The kernel of output position t is dynamic (a function of h[t] only) and is applied to the inputs at
   t, t-1, .., t-K+1: a depthwise causal conv along the sequence whose taps are shared by groups of
   `conv_group_size` channels. "Causal" means *inside the block*: the conv runs over the B block rows
   only (the context features are never convolved; they enter as attention K/V), and row t < o reads
   zero padding, not the previous block or the context. The attention's queries and the block's own
   K/V come from u (the prepared rows); the injected context K/V are unchanged from v1.
   Attention inside the block is bidirectional unless `is_causal` (default: causal exactly in
   sliding-attention layers, z-lab's rule; the published DFlash2 config sets false).

3. Candidate selector (`CandidateSelector`): `predecessor_codebook` and `successor_codebook` [V, r],
   `hidden_projection` H -> r without bias. With logits l [b, B-1, V] (after step 1's transform) and the
   final-normed hidden states of the mask positions:

       candidates_i = top-k(l_i)            (k = selector_top_k)
       score_i(c | p) = l_i[c] + < pred[p] * hidden_projection(hidden_i), succ[c] >   for c in candidates_i

   a low-rank bigram correction between the token p proposed at position i-1 (p = x_start for i = 1)
   and each candidate c. z-lab walks the block left to right: at T = 0 it proposes
   d_i = argmax_c score_i(c | d_{i-1}); at T > 0 it samples d_i ~ softmax(score_i(. | d_{i-1}) / T) over
   the k candidates (no top-k/top-p applied) and passes that softmax as q_i to rejection sampling, with
   `draft_indices` = candidates (q_i is zero outside them). So the selector changes the proposal itself,
   not just a ranking: q_i is a distribution over k tokens conditioned on the previous proposal.

Our runner contract has the drafter return proposal logits [b, B-1, V] from which the loop samples every
position independently (`decoding.sampling.propose`). `DFlash2Drafter.proposal_logits` therefore returns
score_i(. | g_{i-1}) on the candidates and -inf elsewhere, where g is the selector's *greedy* path
(g_0 = x_start, g_i = argmax_c score_i(c | g_{i-1})):
- greedy decoding proposes exactly z-lab's tokens (argmax per position = the greedy walk);
- sampling draws d_i from q_i = probabilities(score_i(. | g_{i-1}), temperature, top-k, top-p) and
  judges d_i with that same q_i, so rejection sampling is lossless for any q that does not depend on
  the target: q here depends only on the drafter's deterministic outputs. It equals z-lab's q_i whenever
  the sampled d_{i-1} = g_{i-1}; when they differ, q_i is conditioned on g_{i-1} instead of d_{i-1}
  (still exact, maybe lower acceptance). Sampling the walk itself (z-lab's exact T > 0 proposal) would need
  the drafter to sample, i.e. a contract change: `selector_scores` below already computes q for any
  predecessors.

State across steps: none beyond v1's. The conv never reads outside the current block and the selector
starts from x_start, which the loop passes in the block, so the runtime keeps only the context K/V cache
(as for v1). Training runs blocks as independent rows, which matches.

Config keys (`dflash_config` first, then the top level; see `config.DrafterConfig`): `conv_kernel_size`,
`conv_group_size` (divides hidden_size), `selector_rank`, `selector_top_k` (required, positive),
`input_embedding_scale` and `output_multiplier` (default 1.0), `final_logit_softcapping` (default none),
`is_causal` (default null). z-lab's published DFlash2 fixture: K = 2, group 16, rank 256, top-k 16,
softcap 20, multiplier 0.196, is_causal false, all sliding-attention layers (window 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dflash_trt.config import DrafterConfig
from dflash_trt.models.drafter import DFlashDrafter, DraftBlock, output_logits


def grouped_causal_conv(x: Tensor, taps: Tensor, base: Tensor) -> Tensor:
    """conv(x, taps, base)[t, c] = sum_o (base[o, c] + taps[t, o, c // group]) * x[t - o, c], x[t < 0] = 0.

    x [b, t, H]; taps [b, t, K, G] (dynamic, per output row); base [K, H] (static). group = H / G.
    """
    b, t, hidden = x.shape
    kernel, groups = taps.shape[-2:]
    xg = x.view(b, t, groups, hidden // groups)
    base = base.to(x.dtype).view(kernel, groups, hidden // groups)
    out = torch.zeros_like(xg)
    for o in range(kernel):
        shifted = xg if o == 0 else F.pad(xg, (0, 0, 0, 0, o, 0))[:, :t]
        out = out + (base[o] + taps[:, :, o, :, None]) * shifted
    return out.view(b, t, hidden)


class GroupedDynamicConv(nn.Module):
    """One `GroupedDynamicCausalConv`: `base` [2, K, H] and `proj` (H -> 2*K*G) for its prepare/finish passes."""

    def __init__(self, hidden: int, kernel_size: int, group_size: int) -> None:
        super().__init__()
        self.kernel_size, self.groups = kernel_size, hidden // group_size
        self.base = nn.Parameter(torch.zeros(2, kernel_size, hidden))
        self.proj = nn.Linear(hidden, 2 * kernel_size * self.groups, bias=False)

    def forward(self, sublayer, h: Tensor) -> Tensor:
        """finish(sublayer(prepare(h))) for the normed sublayer input h [b, t, H]."""
        taps = self.proj(h).view(*h.shape[:-1], 2, self.kernel_size, self.groups)
        y = sublayer(grouped_causal_conv(h, taps[:, :, 0], self.base[0]))
        return grouped_causal_conv(y, taps[:, :, 1], self.base[1])


class Draft2Block(DraftBlock):
    """A v1 draft layer with a grouped dynamic causal conv around its attention and around its MLP."""

    def __init__(self, cfg: DrafterConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.attn_conv = GroupedDynamicConv(cfg.hidden_size, cfg.conv_kernel_size, cfg.conv_group_size)
        self.mlp_conv = GroupedDynamicConv(cfg.hidden_size, cfg.conv_kernel_size, cfg.conv_group_size)

    def forward(self, x: Tensor, context, positions: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn_conv(lambda u: self.attn(u, context, positions, cos, sin), self.attn_norm(x))
        return x + self.mlp_conv(self.mlp, self.mlp_norm(x))


class CandidateSelector(nn.Module):
    """Low-rank bigram codebooks `pred` / `succ` [V, r] and `proj` (H -> r)."""

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__()
        self.top_k = cfg.selector_top_k
        self.pred = nn.Embedding(cfg.vocab_size, cfg.selector_rank)
        self.succ = nn.Embedding(cfg.vocab_size, cfg.selector_rank)
        self.proj = nn.Linear(cfg.hidden_size, cfg.selector_rank, bias=False)


def selector_scores(
    selector: CandidateSelector, hidden: Tensor, logits: Tensor, predecessors: Tensor
) -> tuple[Tensor, Tensor]:
    """(scores [b, n, k] fp32, candidates [b, n, k]): score_i(c | predecessors[:, i]) for the top-k of logits_i.

    hidden [b, n, H] and logits [b, n, V] of the n mask positions; predecessors [b, n] token ids.
    """
    unary, candidates = logits.topk(selector.top_k, dim=-1)
    query = selector.pred(predecessors) * selector.proj(hidden.to(selector.proj.weight.dtype))
    edges = torch.einsum("bnr,bnkr->bnk", query, selector.succ(candidates))
    return unary.float() + edges.float(), candidates


def greedy_walk(
    selector: CandidateSelector, hidden: Tensor, logits: Tensor, anchors: Tensor, steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The selector's greedy walk from anchors [b]: (path [b, n], scores [b, n, k] along it, candidates).

    The walk runs a fixed `steps` >= n iterations (past the last position it repeats it, and the extra rows are
    dropped): a loop count that does not depend on n keeps n, the block size, a dynamic dimension when the
    drafter is exported to ONNX."""
    n = logits.shape[1]
    unary, candidates = logits.topk(selector.top_k, dim=-1)
    query = selector.proj(hidden.to(selector.proj.weight.dtype))  # [b, n, r]
    succ = selector.succ(candidates)  # [b, n, k, r]
    prev, path, scores = anchors, [], []
    for i in range(steps):
        j = torch.sym_min(i, n - 1)
        s = unary[:, j].float() + torch.einsum("br,bkr->bk", selector.pred(prev) * query[:, j], succ[:, j]).float()
        prev = candidates[:, j].gather(-1, s.argmax(-1, keepdim=True))[:, 0]
        path.append(prev)
        scores.append(s)
    return torch.stack(path, 1)[:, :n], torch.stack(scores, 1)[:, :n], candidates


class DFlash2Drafter(DFlashDrafter):
    """DFlash2 weights: v1's plus per layer `attn_conv` / `mlp_conv`, and the `selector`."""

    block_class = Draft2Block

    def __init__(self, cfg: DrafterConfig) -> None:
        super().__init__(cfg)
        self.selector = CandidateSelector(cfg)

    def proposal_logits(self, hidden: Tensor, head_logits: Tensor, anchors: Tensor) -> Tensor:
        """Selector scores [b, B-1, V] (fp32) along the greedy walk from `anchors`, -inf off the candidates
        (see the module docstring: greedy = z-lab's proposals; sampling from them is lossless)."""
        logits = output_logits(self.cfg, head_logits)
        _, scores, candidates = greedy_walk(self.selector, hidden, logits, anchors, self.cfg.block_size - 1)
        out = torch.full(head_logits.shape, float("-inf"), dtype=torch.float32, device=head_logits.device)
        return out.scatter(-1, candidates, scores)


def make_drafter(cfg: DrafterConfig) -> DFlashDrafter:
    """An empty drafter of the architecture `cfg.arch` names (v1 or DFlash2)."""
    return DFlash2Drafter(cfg) if cfg.is_dflash2 else DFlashDrafter(cfg)
