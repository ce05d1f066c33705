"""ONNX export of a DFlash pair, per tensor-parallel rank, traced from the functional models."""

from dflash_trt.export.onnx import export_pair

__all__ = ["export_pair"]
