"""onnxscript translations of the collective custom ops (`dflash_trt.parallel.ops`) into ONNX nodes.

No `from __future__ import annotations` here: onnxscript reads the type annotations as objects.
"""

from typing import TypeVar, Union

import onnxscript
from onnxscript import BFLOAT16, FLOAT, FLOAT16

_OP = onnxscript.values.Opset("dflash_trt", 1)  # = ops.DOMAIN (not imported: ops imports this module)
_T = TypeVar("_T", bound=Union[FLOAT, FLOAT16, BFLOAT16])


@onnxscript.script(onnxscript.values.Opset("dflash_trt.export", 1))
def all_reduce_onnx(x: _T, group_size: int) -> _T:
    return _OP.AllReduce(x, group_size=group_size, reduce_op="sum", plugin_namespace="dflash_trt", plugin_version="1")


@onnxscript.script(onnxscript.values.Opset("dflash_trt.export", 1))
def all_gather_onnx(x: _T, group_size: int) -> _T:
    return _OP.AllGather(x, group_size=group_size, axis=-1, plugin_namespace="dflash_trt", plugin_version="1")
