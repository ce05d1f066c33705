"""Checks of a target/drafter pair for serving, against the mistakes users of the peer engines hit (beyond
`config.check_pair`: hidden/vocab/layer-count mismatch, ids out of range, mask id outside the vocab)."""

from __future__ import annotations

from dflash_trt.config import default_target_layer_ids
from dflash_trt.errors import UserError


def check_serving_pair(
    pair, max_draft_len: int | None, trust_layer_ids: bool = False, sliding_target_ok: bool = True
) -> int:
    """Refuse a pair the serving engines would run wrong; returns max_draft_len (default block_size - 1).
    `sliding_target_ok`: the engine honours a target's sliding-window layers (TensorRT-LLM does, our runtime not)."""
    d, t = pair.drafter, pair.target
    source = str(pair.drafter_dir / "config.json")
    ids = list(d.target_layer_ids)
    if sorted(set(ids)) != ids:
        raise UserError(f"{source}: 'dflash_config.target_layer_ids' {ids} must be strictly increasing layer indices")
    default = default_target_layer_ids(t.num_layers, d.num_layers)
    for shift, how in ((1, "1-based"), (-1, "shifted down by one")):
        if not trust_layer_ids and ids != default and ids == [i + shift for i in default]:
            raise UserError(
                f"{source}: 'dflash_config.target_layer_ids' {ids} look {how}: z-lab ids are 0-based decoder layer "
                f"outputs and this target's default spread is {default}; fix the ids, or pass --trust-layer-ids if "
                "the drafter was really trained on these layers"
            )
    if d.layer_types and "sliding_attention" in d.layer_types and not d.sliding_window:
        raise UserError(
            f"{source}: 'layer_types' has sliding_attention layers but 'sliding_window' is "
            f"{d.sliding_window!r}; set the window the drafter was trained with (else they run as full "
            "attention)"
        )
    window = target_sliding_window(pair)
    if window and not sliding_target_ok:
        raise UserError(
            f"{pair.target_dir / 'config.json'}: the target has sliding-window layers (window {window}); this "
            "project's runtime runs every target layer as full attention, which changes its output: serve it with "
            "`dflash-trt deploy trtllm-serve` or `--kind llmapi` (TensorRT-LLM honours the windows)"
        )
    block = d.block_size
    if max_draft_len is None:
        return block - 1
    if not 1 <= max_draft_len <= block - 1:
        raise UserError(
            f"--max-draft-len is {max_draft_len}; this drafter was trained with block_size {block}, use "
            f"1..{block - 1} (max_draft_len <= block_size - 1)"
        )
    return max_draft_len


def target_sliding_window(pair) -> int | None:
    """The target's sliding window when some of its layers use one (Qwen2/3 use_sliding_window, layer_types)."""
    hf = pair.target_hf
    window = hf.get("sliding_window")
    if not window:
        return None
    if "sliding_attention" in (hf.get("layer_types") or []):
        return int(window)
    if hf.get("use_sliding_window") and int(window) < int(hf.get("max_position_embeddings", 1 << 62)):
        return int(window)
    return None
