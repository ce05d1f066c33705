"""Plugin op contracts as data: the single description used by the reference, ONNX export and docs.

A tensor dimension is a string: either a free symbol bound by the first input that carries it
(``"b"``, ``"S"``) or an integer expression over attributes and bound symbols
(``"(num_heads + 2*num_kv_heads)*head_dim"``). A dtype is a concrete name (``"int32"``) or a type
parameter (``"T"``) that all inputs sharing it must agree on.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

from dflash_trt.errors import UserError

DTYPES = ("float32", "float16", "bfloat16", "int32")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: name, symbolic shape, allowed dtype(s) and meaning."""

    name: str
    shape: tuple[str, ...]
    dtype: str
    doc: str


@dataclass(frozen=True)
class AttrSpec:
    """One plugin field. ``default=None`` means required; ``ge`` is an inclusive lower bound."""

    name: str
    type: str  # "int32", "float32" or "char" (a string): the TensorRT PluginField type
    doc: str
    default: int | float | str | None = None
    choices: tuple[int | str, ...] | None = None
    ge: float | None = None


@dataclass(frozen=True)
class OpContract:
    """A plugin op: identity in the TensorRT registry, tensors, attributes and cross-field rules."""

    name: str
    version: str
    namespace: str
    type_params: Mapping[str, tuple[str, ...]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attrs: tuple[AttrSpec, ...]
    constraints: tuple[tuple[str, str], ...]  # (boolean expression over attributes, message)
    semantics: str

    def resolve_attrs(self, **given: int | float | str) -> dict[str, int | float | str]:
        """Fill defaults and validate every attribute; raise ``UserError`` naming the bad field."""
        known = {a.name for a in self.attrs}
        unknown = sorted(set(given) - known)
        if unknown:
            raise UserError(f"{self.name}: unknown attribute(s) {unknown}; expected {sorted(known)}")
        out: dict[str, int | float | str] = {}
        for a in self.attrs:
            value = given.get(a.name, a.default)
            if value is None:
                raise UserError(f"{self.name}: attribute '{a.name}' is required ({a.doc})")
            out[a.name] = _check_attr(self.name, a, value)
        for expr, message in self.constraints:
            if not _eval(expr, out):
                raise UserError(f"{self.name}: {message} (got {_fmt(out)})")
        return out

    def bind_inputs(
        self, shapes: Sequence[Sequence[int]], dtypes: Sequence[str], attrs: Mapping[str, int | float]
    ) -> tuple[dict[str, int], dict[str, str]]:
        """Check input shapes/dtypes against the contract; return (dimension symbols, type params).

        Free symbols are bound first (by their first occurrence), then every dimension is checked.
        """
        if len(shapes) != len(self.inputs) or len(dtypes) != len(self.inputs):
            raise ValueError(f"{self.name}: expected {len(self.inputs)} inputs, got {len(shapes)}")
        symbols: dict[str, int] = {}  # may hold SymInts under export
        types: dict[str, str] = {}
        for spec, shape, dtype in zip(self.inputs, shapes, dtypes):
            if spec.dtype in self.type_params:
                if dtype not in self.type_params[spec.dtype]:
                    raise ValueError(
                        f"{self.name}: input '{spec.name}' has dtype {dtype}, allowed {self.type_params[spec.dtype]}"
                    )
                bound = types.setdefault(spec.dtype, dtype)
                if bound != dtype:
                    raise ValueError(f"{self.name}: input '{spec.name}' has dtype {dtype} but {spec.dtype}={bound}")
            elif dtype != spec.dtype:
                raise ValueError(f"{self.name}: input '{spec.name}' has dtype {dtype}, expected {spec.dtype}")
            if len(shape) != len(spec.shape):
                raise ValueError(
                    f"{self.name}: input '{spec.name}' has rank {len(shape)}, expected shape {list(spec.shape)}"
                )
            for dim, size in zip(spec.shape, shape):
                if dim.isidentifier() and dim not in attrs:
                    symbols.setdefault(dim, size)
        env = {**attrs, **symbols}
        for spec, shape in zip(self.inputs, shapes):
            want = [_eval(d, env) for d in spec.shape]
            if any(w != size for w, size in zip(want, shape)):
                raise ValueError(
                    f"{self.name}: input '{spec.name}' has shape {list(shape)}, expected {list(spec.shape)} = {want}"
                )
        return symbols, types

    def output_shapes(self, symbols: Mapping[str, int], attrs: Mapping[str, int | float]) -> list[list[int]]:
        """Output shapes for bound symbols (ints, or SymInts under export) and resolved attributes."""
        env = {**attrs, **symbols}
        return [[_eval(d, env) for d in spec.shape] for spec in self.outputs]

    def to_markdown(self) -> str:
        """Human-readable contract (the plugins README embeds this text verbatim)."""
        title = f'### `{self.name}` (version "{self.version}", namespace `{self.namespace}`)'
        lines = [title, "", self.semantics, ""]
        if self.type_params:
            types = ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in self.type_params.items())
            lines += [f"Type parameters: {types}.", ""]
        if self.attrs:
            lines += ["| attribute | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        else:
            lines.append("No attributes.")
        for a in self.attrs:
            allowed = ", ".join(map(str, a.choices)) if a.choices else f">= {a.ge}" if a.ge is not None else "any"
            default = "required" if a.default is None else repr(a.default)
            lines.append(f"| `{a.name}` | {a.type} | {default} | {allowed} | {a.doc} |")
        if self.constraints:
            lines += ["", "Constraints: " + "; ".join(f"`{e}`" for e, _ in self.constraints) + "."]
        lines.append("")
        lines += ["| # | tensor | shape | dtype | meaning |", "|---|---|---|---|---|"]
        for kind, specs in (("in", self.inputs), ("out", self.outputs)):
            for i, t in enumerate(specs):
                lines.append(f"| {kind} {i} | `{t.name}` | [{', '.join(t.shape)}] | {t.dtype} | {t.doc} |")
        return "\n".join(lines) + "\n"


def _check_attr(op: str, a: AttrSpec, value: int | float | str) -> int | float | str:
    if a.type == "char":
        if not isinstance(value, str):
            raise UserError(f"{op}: attribute '{a.name}' must be a string, got {value!r}")
    elif a.type == "int32":
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise UserError(f"{op}: attribute '{a.name}' must be an int32, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{op}: attribute '{a.name}' must be a finite float, got {value!r}")
    else:
        value = float(value)
    if a.choices is not None and value not in a.choices:
        raise UserError(f"{op}: attribute '{a.name}'={value!r} must be one of {a.choices}")
    if a.ge is not None and value < a.ge:
        raise UserError(f"{op}: attribute '{a.name}'={value!r} must be >= {a.ge}")
    return value


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _eval(expr: str, env: Mapping[str, int | float]) -> int | float | bool:
    """Evaluate a contract expression: integers, names, + - * // %, and one comparison."""

    def walk(node: ast.AST) -> int | float | bool:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
            return _CMPOPS[type(node.ops[0])](walk(node.left), walk(node.comparators[0]))
        raise ValueError(f"unsupported contract expression {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


def _fmt(attrs: Mapping[str, int | float]) -> str:
    return ", ".join(f"{k}={v}" for k, v in attrs.items())


BLOCK_ATTENTION = OpContract(
    name="DFlashBlockAttention",
    version="1",
    namespace="dflash_trt",
    type_params={"T": ("float32", "float16", "bfloat16")},
    inputs=(
        TensorSpec(
            "qkv",
            ("b", "B", "(num_heads + 2*num_kv_heads)*head_dim"),
            "T",
            "block's fused projection, q then k then v, before norm and RoPE",
        ),
        TensorSpec("q_norm_weight", ("head_dim",), "T", "per-head RMSNorm weight for q"),
        TensorSpec("k_norm_weight", ("head_dim",), "T", "per-head RMSNorm weight for k (ignored when qk_norm=0)"),
        TensorSpec("rope_cos", ("max_pos", "head_dim // 2"), "float32", "RoPE cos table (rotate-half layout)"),
        TensorSpec("rope_sin", ("max_pos", "head_dim // 2"), "float32", "RoPE sin table (rotate-half layout)"),
        TensorSpec(
            "k_cache",
            ("b", "num_kv_heads", "S", "head_dim"),
            "T",
            "context keys, already normed and roped; first ctx_lens[s] positions valid",
        ),
        TensorSpec("v_cache", ("b", "num_kv_heads", "S", "head_dim"), "T", "context values"),
        TensorSpec("ctx_lens", ("b",), "int32", "valid context length per sequence (0 <= ctx_lens <= S)"),
    ),
    outputs=(TensorSpec("out", ("b", "B", "num_heads*head_dim"), "T", "attention output, heads concatenated"),),
    attrs=(
        AttrSpec("num_heads", "int32", "query heads", ge=1),
        AttrSpec("num_kv_heads", "int32", "key/value heads (GQA groups)", ge=1),
        AttrSpec("head_dim", "int32", "head dimension", choices=(64, 128)),
        AttrSpec(
            "window", "int32", "sliding window: key visible iff abs(p_q - p_k) < window; 0 = none", default=0, ge=0
        ),
        AttrSpec("qk_norm", "int32", "1: RMSNorm q and k per head before RoPE", default=1, choices=(0, 1)),
        AttrSpec("eps", "float32", "RMSNorm epsilon", default=1e-6, ge=0.0),
    ),
    constraints=(("num_heads % num_kv_heads == 0", "num_heads must be a multiple of num_kv_heads"),),
    semantics=(
        "Block query i of sequence s sits at position p_i = ctx_lens[s] + i. "
        "q = rope(rmsnorm(q_raw) * q_norm_weight), block k likewise with k_norm_weight, block v raw "
        "(fp32 math; rope: x1 = x[:d/2], x2 = x[d/2:], out = [x1*cos - x2*sin, x2*cos + x1*sin]). "
        "Query head h uses kv head h // (num_heads // num_kv_heads). Keys = context keys "
        "k_cache[s, :, :ctx_lens[s]] then the B block keys; bidirectional inside the block; with "
        "window > 0 a key at p_k is visible iff |p_i - p_k| < window. Scale 1/sqrt(head_dim), fp32 softmax."
    ),
)

CONTEXT_KV_APPEND = OpContract(
    name="DFlashContextKVAppend",
    version="1",
    namespace="dflash_trt",
    type_params={"T": ("float32", "float16", "bfloat16")},
    inputs=(
        TensorSpec(
            "kv",
            ("b", "N", "2*num_kv_heads*head_dim"),
            "T",
            "new context tokens' k heads then v heads, before norm and RoPE",
        ),
        TensorSpec("k_norm_weight", ("head_dim",), "T", "per-head RMSNorm weight for k (ignored when qk_norm=0)"),
        TensorSpec("rope_cos", ("max_pos", "head_dim // 2"), "float32", "RoPE cos table (rotate-half layout)"),
        TensorSpec("rope_sin", ("max_pos", "head_dim // 2"), "float32", "RoPE sin table (rotate-half layout)"),
        TensorSpec("k_cache", ("b", "num_kv_heads", "S", "head_dim"), "T", "layer's key cache"),
        TensorSpec("v_cache", ("b", "num_kv_heads", "S", "head_dim"), "T", "layer's value cache"),
        TensorSpec("ctx_lens", ("b",), "int32", "current valid length per sequence = write offset"),
        TensorSpec("new_lens", ("b",), "int32", "valid rows of kv per sequence (ragged acceptance)"),
    ),
    outputs=(
        TensorSpec("k_cache_out", ("b", "num_kv_heads", "S", "head_dim"), "T", "updated keys; aliases k_cache"),
        TensorSpec("v_cache_out", ("b", "num_kv_heads", "S", "head_dim"), "T", "updated values; aliases v_cache"),
    ),
    attrs=(
        AttrSpec("num_kv_heads", "int32", "key/value heads", ge=1),
        AttrSpec("head_dim", "int32", "head dimension", choices=(64, 128)),
        AttrSpec("qk_norm", "int32", "1: RMSNorm k per head before RoPE", default=1, choices=(0, 1)),
        AttrSpec("eps", "float32", "RMSNorm epsilon", default=1e-6, ge=0.0),
    ),
    constraints=(),
    semantics=(
        "Row n < new_lens[s] of sequence s goes to position p = ctx_lens[s] + n when p < min(S, max_pos): "
        "its key is normed and roped exactly like a DFlashBlockAttention block key and written to "
        "k_cache_out[s, :, p], its value raw to v_cache_out[s, :, p]. Every other cache element is unchanged; "
        "ctx_lens is not advanced (the runtime adds new_lens). In place: the outputs alias the cache inputs "
        "(build with PreviewFeature.ALIASED_PLUGIN_IO_10_03); enqueue fails, rather than copy the cache, when "
        "TensorRT hands it other output buffers."
    ),
)

# The paged layout serving engines use (TensorRT Edge-LLM's KV-update plugin takes the same pool and a
# [b, 2, max_pages] page table): one pool per layer, key pages in kv_pool[0] and value pages in kv_pool[1].
PAGED_CACHE_DOC = (
    "Position p of sequence s keeps its key at kv_pool[0, page_table[s, 0, p // tokens_per_page], "
    "p % tokens_per_page] and its value at kv_pool[1, page_table[s, 1, p // tokens_per_page], "
    "p % tokens_per_page]; a sequence's capacity is S = max_pages * tokens_per_page, and a page id outside "
    "[0, pages) marks a position unusable."
)
KV_POOL = TensorSpec(
    "kv_pool",
    ("2", "pages", "tokens_per_page", "num_kv_heads", "head_dim"),
    "T",
    "paged K/V pool of the layer: [0] key pages, [1] value pages",
)
PAGE_TABLE = TensorSpec(
    "page_table", ("b", "2", "max_pages"), "int32", "page ids per sequence: [s, 0] key pages, [s, 1] value pages"
)

PAGED_BLOCK_ATTENTION = OpContract(
    name="DFlashPagedBlockAttention",
    version="1",
    namespace="dflash_trt",
    type_params=BLOCK_ATTENTION.type_params,
    inputs=BLOCK_ATTENTION.inputs[:5]
    + (
        dataclasses.replace(KV_POOL, doc="paged K/V pool (context keys already normed and roped)"),
        PAGE_TABLE,
        TensorSpec("ctx_lens", ("b",), "int32", "valid context length per sequence (0 <= ctx_lens <= S)"),
    ),
    outputs=BLOCK_ATTENTION.outputs,
    attrs=BLOCK_ATTENTION.attrs,
    constraints=BLOCK_ATTENTION.constraints,
    semantics=(
        "DFlashBlockAttention with the context keys and values read from a paged pool. "
        + PAGED_CACHE_DOC
        + " A sequence whose context uses an unusable position gets NaN outputs."
    ),
)

PAGED_KV_APPEND = OpContract(
    name="DFlashPagedKVAppend",
    version="1",
    namespace="dflash_trt",
    type_params=CONTEXT_KV_APPEND.type_params,
    inputs=CONTEXT_KV_APPEND.inputs[:4]
    + (
        KV_POOL,
        PAGE_TABLE,
        CONTEXT_KV_APPEND.inputs[6],
        CONTEXT_KV_APPEND.inputs[7],
    ),
    outputs=(
        TensorSpec(
            "kv_pool_out",
            ("2", "pages", "tokens_per_page", "num_kv_heads", "head_dim"),
            "T",
            "updated pool; aliases kv_pool",
        ),
    ),
    attrs=CONTEXT_KV_APPEND.attrs,
    constraints=(),
    semantics=(
        "DFlashContextKVAppend into a paged pool, in place (kv_pool_out aliases kv_pool; same aliasing rule). "
        + PAGED_CACHE_DOC
        + " A row whose position is unusable is not written."
    ),
)

ACCEPT_TOKENS = OpContract(
    name="DFlashAcceptTokens",
    version="1",
    namespace="dflash_trt",
    type_params={},
    inputs=(
        TensorSpec("draft_tokens", ("b", "B - 1"), "int32", "drafted block tokens 1..B-1"),
        TensorSpec("target_tokens", ("b", "B"), "int32", "target argmax after block tokens 0..B-1"),
    ),
    outputs=(
        TensorSpec("accepted_len", ("b",), "int32", "leading i with draft_tokens[s, i] == target_tokens[s, i]"),
        TensorSpec("bonus_token", ("b",), "int32", "target_tokens[s, accepted_len[s]]"),
    ),
    attrs=(),
    constraints=(),
    semantics="Greedy acceptance: sequence s commits accepted_len[s] drafted tokens, then bonus_token[s].",
)

# The tensor-parallel collectives of the exported rank graphs (`dflash_trt.parallel.onnx_ops` emits them; the CUDA
# build runs them with NCCL over the communicator the runtime creates through dflash_trt_nccl_init). The shapes are
# those of the exported graphs: activations [batch, tokens, features], gathered along the last axis.
COLLECTIVE_TYPES = {"T": ("float32", "float16", "bfloat16")}

ALL_REDUCE = OpContract(
    name="AllReduce",
    version="1",
    namespace="dflash_trt",
    type_params=COLLECTIVE_TYPES,
    inputs=(TensorSpec("x", ("b", "t", "n"), "T", "this rank's partial result"),),
    outputs=(TensorSpec("y", ("b", "t", "n"), "T", "the sum of x over the group's ranks, on every rank"),),
    attrs=(
        AttrSpec("group_size", "int32", "ranks in the tensor-parallel group", ge=1),
        AttrSpec("reduce_op", "char", "the reduction", default="sum", choices=("sum",)),
    ),
    constraints=(),
    semantics=(
        "y = the elementwise sum of every rank's x (NCCL all-reduce on the enqueue stream; a copy when "
        "group_size = 1). The plugin takes x of any rank; y has x's shape and type."
    ),
)

ALL_GATHER = OpContract(
    name="AllGather",
    version="1",
    namespace="dflash_trt",
    type_params=COLLECTIVE_TYPES,
    inputs=(TensorSpec("x", ("b", "t", "n"), "T", "this rank's slice"),),
    outputs=(TensorSpec("y", ("b", "t", "group_size*n"), "T", "the ranks' x concatenated along axis, in rank order"),),
    attrs=(
        AttrSpec("group_size", "int32", "ranks in the tensor-parallel group", ge=1),
        AttrSpec(
            "axis", "int32", "the concatenation axis (the exported graphs gather the last)", default=-1, choices=(-1,)
        ),
    ),
    constraints=(),
    semantics=(
        "y = concat([x of rank 0, ..., x of rank group_size - 1], axis) (NCCL all-gather on the enqueue stream, "
        "then, when the dims before axis hold more than one element, a transpose kernel from the workspace). "
        "The plugin takes x of any rank >= 1 and any axis in [-rank, rank); the shapes here are those of axis = -1, "
        "the only one the export emits."
    ),
)

CONTRACTS: dict[str, OpContract] = {
    c.name: c
    for c in (
        BLOCK_ATTENTION,
        CONTEXT_KV_APPEND,
        ACCEPT_TOKENS,
        PAGED_BLOCK_ATTENTION,
        PAGED_KV_APPEND,
        ALL_REDUCE,
        ALL_GATHER,
    )
}

if __name__ == "__main__":
    print("\n".join(c.to_markdown() for c in CONTRACTS.values()), end="")
