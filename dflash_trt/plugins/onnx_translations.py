"""onnxscript translations of `dflash_trt::context_kv_append` and `dflash_trt::block_attention` into the
`DFlashContextKVAppend` and `DFlashBlockAttention` plugin nodes (domain, name, version and attributes of
`dflash_trt.plugins.contracts.CONTEXT_KV_APPEND` / `BLOCK_ATTENTION`; tested equal).

No `from __future__ import annotations` here: onnxscript reads the type annotations as objects.
"""

from typing import Tuple, TypeVar, Union

import onnxscript
from onnxscript import BFLOAT16, FLOAT, FLOAT16, INT32

_OP = onnxscript.values.Opset("dflash_trt", 1)
_T = TypeVar("_T", bound=Union[FLOAT, FLOAT16, BFLOAT16])


@onnxscript.script(onnxscript.values.Opset("dflash_trt.export", 1))
def context_kv_append_onnx(
    kv: _T,
    k_norm_weight: _T,
    rope_cos: FLOAT,
    rope_sin: FLOAT,
    k_cache: _T,
    v_cache: _T,
    ctx_lens: INT32,
    new_lens: INT32,
    num_kv_heads: int,
    head_dim: int,
    qk_norm: int,
    eps: float,
) -> Tuple[_T, _T]:
    k_out, v_out = _OP.DFlashContextKVAppend(
        kv,
        k_norm_weight,
        rope_cos,
        rope_sin,
        k_cache,
        v_cache,
        ctx_lens,
        new_lens,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        qk_norm=qk_norm,
        eps=eps,
        plugin_namespace="dflash_trt",
        plugin_version="1",
    )
    return k_out, v_out


@onnxscript.script(onnxscript.values.Opset("dflash_trt.export", 1))
def block_attention_onnx(
    qkv: _T,
    q_norm_weight: _T,
    k_norm_weight: _T,
    rope_cos: FLOAT,
    rope_sin: FLOAT,
    k_cache: _T,
    v_cache: _T,
    ctx_lens: INT32,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    window: int,
    qk_norm: int,
    eps: float,
) -> _T:
    return _OP.DFlashBlockAttention(
        qkv,
        q_norm_weight,
        k_norm_weight,
        rope_cos,
        rope_sin,
        k_cache,
        v_cache,
        ctx_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        window=window,
        qk_norm=qk_norm,
        eps=eps,
        plugin_namespace="dflash_trt",
        plugin_version="1",
    )
