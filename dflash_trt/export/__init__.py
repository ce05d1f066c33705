"""ONNX export of a DFlash pair, per tensor-parallel rank, traced from the functional models."""
