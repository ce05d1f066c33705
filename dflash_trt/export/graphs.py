"""The exported graphs and their tensor names: the contract between export, `dflash-trt build` and the
onnxruntime / TensorRT runtimes. Names follow the conventions of ONNX Runtime GenAI and Optimum
(`input_ids`, `past_key_values.{i}.key`, `present.{i}.key`).

Shapes use these symbols: batch, tokens (prompt or block length), past (cached positions visible to the
forward, >= max(cache_lens)), block (B), kv_heads and head_dim of the model (this rank's shard), F =
len(target_layer_ids) * hidden, vocab (the full vocabulary: a vocab-parallel head gathers it).

- target_prefill: input_ids [batch, tokens] int64, cache_lens [batch] int64 (committed positions before the
  tokens), last_token_index [batch] int64, past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
  -> logits [batch, vocab] (at last_token_index), features [batch, tokens, F],
  present.{i}.key / .value [batch, tokens, kv_heads, head_dim] (the K/V of the new tokens only).
- target_verify: input_ids [batch, block], cache_lens, past_key_values.* -> logits [batch, block, vocab],
  features [batch, block, F], present.*.
- drafter_context (the KV injection): features [batch, tokens, F], cache_lens [batch] (context positions
  before the features) -> present.{i}.key / .value [batch, tokens, kv_heads, head_dim] per draft layer.
- drafter_block: input_ids [batch, block], cache_lens [batch] (each row's context length),
  past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] (the injected context) ->
  logits [batch, block - 1, vocab] (draft logits at the mask positions).

The runtime owns the caches: it writes `present.*` at positions cache_lens[b] + i and commits what it keeps.
"""

from __future__ import annotations

TARGET_PREFILL = "target_prefill"
TARGET_VERIFY = "target_verify"
DRAFTER_CONTEXT = "drafter_context"
DRAFTER_BLOCK = "drafter_block"
GRAPHS = (TARGET_PREFILL, TARGET_VERIFY, DRAFTER_CONTEXT, DRAFTER_BLOCK)


def past_names(layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value for each layer, in that order."""
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    """present.{i}.key, present.{i}.value for each layer, in that order."""
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
