"""Weight-only quantization of exported graphs for the onnxruntime backend (`--weight-only int4|int8`).

Every MatMul with a constant weight (the LM head's transposed embedding included) becomes onnxruntime's
`com.microsoft::MatMulNBits`: weights in blocks of 32 along the input dimension, each with a scale and a zero
point (asymmetric round-to-nearest), and int8 compute of the activations (`accuracy_level` 4: MLAS's
AVX512-VNNI/AMX kernels). Blocks of 32 are the embedded target's own GGUF blocks (Q4_1 linear layers, Q8_0
embedding), but not its exact grid: the GGUF offsets are floats, MatMulNBits zero points integers. Outputs
therefore differ slightly from the fp32 graphs; DFlash and AR on the same quantized graphs are compared by
the benchmarks, which report how often they agree.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

PRECISIONS = {"int4": 4, "int8": 8}
BLOCK = 32
ACCURACY_LEVEL = 4  # int8 activations in the GEMMs (onnxruntime's MatMulNBits accuracy levels 0-4)


def quantize_matmuls(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """`model` (external data loaded) with its constant-weight MatMuls as MatMulNBits of `precision`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    _fold_transposed_weights(model)
    quantizer = MatMulNBitsQuantizer(
        model, bits=PRECISIONS[precision], block_size=BLOCK, is_symmetric=False, accuracy_level=ACCURACY_LEVEL
    )
    quantizer.process()
    return quantizer.model.model


def _fold_transposed_weights(model: onnx.ModelProto) -> None:
    """MatMul(x, Transpose(W)) with a 2-D initializer W -> MatMul(x, W^T as an initializer), so that the
    quantizer sees a constant weight (a tied LM head reads the embedding through such a Transpose)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in producer:
            continue
        t = producer[node.input[1]]
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), [1, 0])
        if t.op_type != "Transpose" or t.input[0] not in inits or perm != [1, 0]:
            continue
        weight = numpy_helper.to_array(inits[t.input[0]])
        if weight.ndim != 2:
            continue
        name = f"{t.input[0]}.transposed"
        graph.initializer.append(numpy_helper.from_array(weight.T.copy(), name))
        node.input[1] = name
        if consumers[t.output[0]] == 1:
            graph.node.remove(t)
