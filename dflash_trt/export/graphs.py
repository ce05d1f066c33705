"""The exported graphs and their tensor names: the contract between export, `dflash-trt build` and the
onnxruntime / TensorRT runtimes. Names follow the conventions of ONNX Runtime GenAI and Optimum
(`input_ids`, `past_key_values.{i}.key`, `present.{i}.key`). One graph per model and rank, so that a
TensorRT engine is one network (`target/rank{r}.engine`, `drafter/rank{r}.engine`) with optimization
profiles for its phases (prompt, step).

Shapes use these symbols: batch, tokens (new tokens), past (cached positions visible to the forward,
>= max(cache_lens)), block (B), kv_heads and head_dim of the model (this rank's shard), F =
len(target_layer_ids) * hidden, vocab (the full vocabulary: a vocab-parallel head gathers it).

- target: input_ids [batch, tokens] int64, cache_lens [batch] int64 (committed positions before the
  tokens), logits_index [batch, n] int64 (which of the tokens get logits: the last prompt token at prefill,
  all B at verify), past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
  -> logits [batch, n, vocab], features [batch, tokens, F],
  present.{i}.key / .value [batch, tokens, kv_heads, head_dim] (the K/V of the new tokens only).
- drafter (KV injection fused with drafting): input_ids [batch, block] (x_start + masks), features
  [batch, tokens, F] (target features of newly committed positions), feature_lens [batch] int64 (how many of
  them each row committed), cache_lens [batch] int64 (context positions before them),
  past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] (the injected context so far)
  -> logits [batch, block - 1, vocab] (draft logits at the mask positions), draft_tokens [batch, block - 1]
  int64 (their argmax: the greedy drafts, so that a greedy runtime copies token ids, not logits),
  present.{i}.key / .value [batch, tokens, kv_heads, head_dim] (context K/V of the new features).
  The block sits at positions cache_lens + feature_lens + i and sees the valid context and its whole self.
  Plugin flavors (recipe `attention: plugin`, `export_pair(flavor=...)`): past_key_values.* are the whole
  context caches and present.* the same caches after the in-place `DFlashContextKVAppend` (TensorRT aliases
  them); the runtime binds both to one buffer and only advances its lengths.

The runtime owns the caches: it writes `present.*` at positions cache_lens[b] + i and commits what it keeps
(the target: accepted tokens; the drafter: feature_lens).
"""

from __future__ import annotations

TARGET = "target"
DRAFTER = "drafter"
GRAPHS = (TARGET, DRAFTER)


def past_names(layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value for each layer, in that order."""
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    """present.{i}.key, present.{i}.value for each layer, in that order."""
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
