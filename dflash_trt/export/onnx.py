"""ONNX export of one tensor-parallel rank of a DFlash pair: the `target` and `drafter` graphs of
`dflash_trt.export.graphs`, traced with the dynamo exporter (opset 23) from the functional models.

The wrappers below only arrange inputs and outputs around `Transformer.forward`,
`DFlashDrafter.context_kv` / `forward` and `layers.Keys`; the model math is the models' own. RoPE tables
become constants of the graph (sized for `max_seq_len`). Collectives of a TP rank (forward hooks of
`dflash_trt.parallel.tensor_parallel`) are traced through the custom ops of `dflash_trt.parallel.ops` and
become `dflash_trt::AllReduce` / `dflash_trt::AllGather` nodes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from dflash_trt.config import DRAFT_VOCAB_FILE
from dflash_trt.errors import UserError
from dflash_trt.export.graphs import DRAFTER, TARGET, past_names, present_names
from dflash_trt.models.drafter import DFlashDrafter, VocabHead
from dflash_trt.models.layers import Keys, Rope
from dflash_trt.models.target import Transformer
from dflash_trt.parallel.ops import exporting, onnx_translations

OPSET = 23
FLAVORS = ("native", "plugin_kv", "plugin")  # drafter graph flavors (see export_pair)
EXTERNAL_DATA_THRESHOLD = 1 << 20  # tensors above 1 MiB go to the external data file


class TargetGraph(nn.Module):
    """target: (input_ids, cache_lens, logits_index, past...) -> (logits, features, present...)."""

    def __init__(self, model: Transformer, capture: tuple[int, ...], max_seq_len: int) -> None:
        super().__init__()
        cfg = model.cfg
        self.model, self.capture = model, tuple(capture)
        rope = Rope.build(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_seq_len)
        self.register_buffer("rope_cos", rope.cos, persistent=False)
        self.register_buffer("rope_sin", rope.sin, persistent=False)

    def forward(self, input_ids: Tensor, cache_lens: Tensor, logits_index: Tensor, *past: Tensor):
        cache = list(zip(past[0::2], past[1::2]))
        hidden, features, new_kv = self.model(
            input_ids, cache, cache_lens, Rope(self.rope_cos, self.rope_sin), self.capture
        )
        picked = torch.gather(hidden, 1, logits_index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        logits = self.model.lm_head(picked)
        return (logits, features, *[t for kv in new_kv for t in kv])


class DrafterGraph(nn.Module):
    """drafter: (input_ids, features, feature_lens, cache_lens, past...) -> (logits, draft_tokens, present...).

    KV injection of the new features (positions cache_lens + i, valid for i < feature_lens) fused with the
    block pass: the block at cache_lens + feature_lens + j sees the cached context, the valid new context and
    its whole self. Embedding and LM head are the target's (this rank's shards, collectives included); the head
    covers only the drafter's draft vocabulary when it has one (a `VocabHead`: the other logits are -inf)."""

    def __init__(self, model: DFlashDrafter, embed: nn.Module, lm_head: nn.Module, max_seq_len: int) -> None:
        super().__init__()
        cfg = model.cfg
        self.model, self.embed, self.lm_head = model, embed, lm_head
        rope = Rope.build(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, max_seq_len)
        self.register_buffer("rope_cos", rope.cos, persistent=False)
        self.register_buffer("rope_sin", rope.sin, persistent=False)

    def forward(self, input_ids: Tensor, features: Tensor, feature_lens: Tensor, cache_lens: Tensor, *past: Tensor):
        rope = Rope(self.rope_cos, self.rope_sin)
        steps = torch.arange(features.shape[1], device=features.device)
        positions = cache_lens[:, None] + steps
        valid = steps[None, :] < feature_lens[:, None]
        new_kv = self.model.context_kv(features, positions, rope)
        context = [
            Keys.cached(k, v, cache_lens) + Keys.new(nk, nv, positions, valid)
            for k, v, (nk, nv) in zip(past[0::2], past[1::2], new_kv)
        ]
        logits = self.block_pass(self.model, input_ids, cache_lens + feature_lens, context)
        return (logits, logits.argmax(-1), *[t for kv in new_kv for t in kv])

    def block_pass(self, model: DFlashDrafter, input_ids: Tensor, context_len: Tensor, context: list[Keys]) -> Tensor:
        """Draft logits [b, B-1, V] of blocks input_ids [b, B] placed at context_len + j: embedding (z-lab's
        input scaling), the drafter's layers over `context`, the LM head and the drafter's proposal logits."""
        block_pos = context_len[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids)
        scale = getattr(model.cfg, "input_embedding_scale", 1.0)
        if scale != 1.0:
            x = x * scale
        hidden = model(x, block_pos, context, Rope(self.rope_cos, self.rope_sin))[:, 1:]
        return model.proposal_logits(hidden, self.lm_head(hidden), input_ids[:, 0])


class DrafterPluginGraph(DrafterGraph):
    """The plugin flavors of the drafter graph: past_key_values.* are the whole context caches
    [batch, kv_heads, capacity, head_dim]; each layer's `DFlashContextKVAppend` plugin node writes the new
    features' K/V into them in place, and present.* are those same buffers (TensorRT aliases them to the
    inputs with ALIASED_PLUGIN_IO_10_03). The block then attends the updated cache: with ONNX `Attention`
    (flavor `plugin_kv`) or with one `DFlashBlockAttention` plugin node per layer (flavor `plugin`). The
    runtime advances its lengths by feature_lens."""

    def __init__(self, model: DFlashDrafter, embed: nn.Module, lm_head: nn.Module, max_seq_len: int, flavor: str):
        super().__init__(model, embed, lm_head, max_seq_len)
        if flavor == "plugin":
            from dflash_trt.export.plugin_ops import with_plugin_attention

            model = with_plugin_attention(model, self.rope_cos, self.rope_sin)
        self.block_model = model

    def forward(self, input_ids: Tensor, features: Tensor, feature_lens: Tensor, cache_lens: Tensor, *past: Tensor):
        from dflash_trt.export.plugin_ops import context_kv_append

        model = self.model
        c = model.hidden_norm(model.fc(features))
        ctx_lens, new_lens = cache_lens.to(torch.int32), feature_lens.to(torch.int32)
        context_len = cache_lens + feature_lens
        context, caches = [], []
        for layer, k_cache, v_cache in zip(model.layers, past[0::2], past[1::2]):
            attn = layer.attn
            q_dim = attn.n_heads * attn.head_dim
            bias = attn.wqkv.bias[q_dim:] if attn.wqkv.bias is not None else None
            kv = nn.functional.linear(c, attn.wqkv.weight[q_dim:], bias)  # k heads then v heads, raw
            k, v = context_kv_append(
                kv,
                attn.k_norm.weight,
                self.rope_cos,
                self.rope_sin,
                k_cache,
                v_cache,
                ctx_lens,
                new_lens,
                attn.n_kv,
                attn.head_dim,
                1,
                attn.k_norm.eps,
            )
            context.append(Keys.cached(k, v, context_len))
            caches += [k, v]
        logits = self.block_pass(self.block_model, input_ids, context_len, context)
        return (logits, logits.argmax(-1), *caches)


def _dims():
    D = torch.export.Dim
    return dict(
        batch=D("batch", min=1, max=4096),
        tokens=D("tokens", min=1, max=1 << 20),
        past=D("past", min=1, max=1 << 20),
        n=D("n", min=1, max=1 << 20),
        block=D("block", min=2, max=1024),
    )


def _save(program, path: Path, input_names: list[str], output_names: list[str]) -> None:
    import onnx

    model = program.model_proto
    for name, value in zip([i.name for i in model.graph.input], input_names):
        assert name == value, (name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_suffix(".onnx.data")
    for p in (path, data):
        p.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=EXTERNAL_DATA_THRESHOLD,
    )
    onnx.checker.check_model(str(path), full_check=False)


def _export(
    module: nn.Module,
    example: tuple,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, object]],
    path: Path,
    n_fixed: int,
    plugins: bool = False,
) -> None:
    """Export `module(*fixed, *past)`; dynamic_shapes follow the signature (the past tensors as one tuple)."""
    shapes = [dynamic.get(name) for name in input_names]
    shapes = (*shapes[:n_fixed], tuple(shapes[n_fixed:]))
    table = onnx_translations()
    if plugins:
        from dflash_trt.export import plugin_ops

        table |= plugin_ops.onnx_translations()
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=shapes,
            custom_translation_table=table,
            optimize=True,
            verbose=False,
        )
    _save(program, path, input_names, output_names)


def export_target(
    target: Transformer, capture: tuple[int, ...], path: Path, *, dtype: torch.dtype, max_seq_len: int
) -> Path:
    cfg = target.cfg
    layers = cfg.num_layers
    module = TargetGraph(target, capture, max_seq_len).eval()
    b, t, s = 2, 3, 4
    weight = target.embed.weight
    example = (
        torch.zeros(b, t, dtype=torch.long),
        torch.tensor([1, 2]),
        torch.zeros(b, t, dtype=torch.long),
        *[torch.zeros(b, cfg.num_kv_heads, s, cfg.head_dim, dtype=dtype) for _ in range(2 * layers)],
    )
    assert weight.dtype == dtype, f"target weights are {weight.dtype}, export asked for {dtype}"
    d = _dims()
    inputs = ["input_ids", "cache_lens", "logits_index", *past_names(layers)]
    outputs = ["logits", "features", *present_names(layers)]
    dynamic = {
        "input_ids": {0: d["batch"], 1: d["tokens"]},
        "cache_lens": {0: d["batch"]},
        "logits_index": {0: d["batch"], 1: d["n"]},
    }
    dynamic |= {name: {0: d["batch"], 2: d["past"]} for name in past_names(layers)}
    _export(module, example, inputs, outputs, dynamic, path, 3)
    return path


def check_flavor(drafter: DFlashDrafter, flavor: str) -> None:
    """Refuse a drafter graph flavor the drafter cannot take (the plugins' own rules name the field)."""
    if flavor not in FLAVORS:
        raise ValueError(f"drafter graph flavor {flavor!r}: use one of {', '.join(FLAVORS)}")
    if flavor == "native":
        return
    from dflash_trt.plugins.contracts import BLOCK_ATTENTION, CONTEXT_KV_APPEND

    cfg = drafter.cfg
    CONTEXT_KV_APPEND.resolve_attrs(
        num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, qk_norm=1, eps=cfg.rms_norm_eps
    )
    if flavor == "plugin":
        if any(layer.attn.causal for layer in drafter.layers):
            raise UserError(f"{BLOCK_ATTENTION.name} is bidirectional inside the block, this drafter is causal")
        BLOCK_ATTENTION.resolve_attrs(
            num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, eps=cfg.rms_norm_eps
        )


def export_drafter(
    drafter: DFlashDrafter,
    embed: nn.Module,
    lm_head: nn.Module,
    path: Path,
    *,
    dtype: torch.dtype,
    max_seq_len: int,
    block_size: int,
    flavor: str = "native",
) -> Path:
    cfg = drafter.cfg
    layers = cfg.num_layers
    check_flavor(drafter, flavor)
    if drafter.draft_vocab is not None:  # the head over the draft vocabulary's rows only, as the torch runner's
        lm_head = VocabHead.rows_of(lm_head, drafter.draft_vocab)
    if flavor == "native":
        module = DrafterGraph(drafter, embed, lm_head, max_seq_len).eval()
    else:
        module = DrafterPluginGraph(drafter, embed, lm_head, max_seq_len, flavor).eval()
    b, t, s = 2, 3, 4
    width = drafter.fc.in_features
    example = (
        torch.zeros(b, block_size, dtype=torch.long),
        torch.zeros(b, t, width, dtype=dtype),
        torch.tensor([3, 1]),
        torch.tensor([1, 2]),
        *[torch.zeros(b, cfg.num_kv_heads, s, cfg.head_dim, dtype=dtype) for _ in range(2 * layers)],
    )
    d = _dims()
    inputs = ["input_ids", "features", "feature_lens", "cache_lens", *past_names(layers)]
    outputs = ["logits", "draft_tokens", *present_names(layers)]
    dynamic = {
        "input_ids": {0: d["batch"], 1: d["block"]},
        "features": {0: d["batch"], 1: d["tokens"]},
        "feature_lens": {0: d["batch"]},
        "cache_lens": {0: d["batch"]},
    }
    dynamic |= {name: {0: d["batch"], 2: d["past"]} for name in past_names(layers)}
    _export(module, example, inputs, outputs, dynamic, path, 4, flavor != "native")
    return path


def export_pair(
    target: Transformer,
    drafter: DFlashDrafter,
    out_dir: Path,
    *,
    dtype: torch.dtype,
    max_batch: int,
    max_seq_len: int,
    block_size: int,
    rank: int = 0,
    tp_size: int = 1,
    flavor: str = "native",
) -> dict[str, Path]:
    """Write `out_dir/target.onnx` and `out_dir/drafter.onnx` (+ `.onnx.data` external weights) for one rank
    from already loaded rank-local models (TP ranks: built by `parallel.tensor_parallel`). Returns
    {"target": path, "drafter": path}. `max_batch` and `rank`/`tp_size` are recorded in `out_dir/export.json`;
    the graphs themselves have dynamic batch, token and cache axes; RoPE tables cover `max_seq_len`.

    `flavor` picks the drafter graph (`FLAVORS`): "native" (standard ops only, the graph the onnxruntime
    backend runs), "plugin_kv" (`DrafterPluginGraph`: one `DFlashContextKVAppend` node per layer writing the
    whole-cache inputs, outputs aliased; ONNX Attention for the block) or "plugin" (the same with one
    `DFlashBlockAttention` node per layer for the block)."""
    if block_size < 2 or block_size > drafter.cfg.block_size:
        raise ValueError(f"block_size {block_size}: use 2..{drafter.cfg.block_size} (the drafter's trained size)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    times = {}
    with exporting(tp_size):
        start = time.perf_counter()
        paths = {
            TARGET: export_target(
                target,
                tuple(drafter.cfg.target_layer_ids),
                out_dir / f"{TARGET}.onnx",
                dtype=dtype,
                max_seq_len=max_seq_len,
            )
        }
        times[TARGET] = time.perf_counter() - start
        start = time.perf_counter()
        paths[DRAFTER] = export_drafter(
            drafter,
            target.embed,
            target.lm_head,
            out_dir / f"{DRAFTER}.onnx",
            dtype=dtype,
            max_seq_len=max_seq_len,
            block_size=block_size,
            flavor=flavor,
        )
        times[DRAFTER] = time.perf_counter() - start
    info = dict(
        rank=rank,
        tp_size=tp_size,
        dtype=str(dtype).removeprefix("torch."),
        max_batch=max_batch,
        max_seq_len=max_seq_len,
        block_size=block_size,
        opset=OPSET,
        drafter_flavor=flavor,
        target_layers=target.cfg.num_layers,
        drafter_layers=drafter.cfg.num_layers,
        target_layer_ids=list(drafter.cfg.target_layer_ids),
        export_seconds=times,
    )
    (out_dir / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    if drafter.draft_vocab is not None:  # the tokens the drafter graph drafts from (its runner reports them)
        (out_dir / DRAFT_VOCAB_FILE).write_text(json.dumps({"token_ids": drafter.draft_vocab.tolist()}) + "\n")
    return paths
