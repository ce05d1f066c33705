"""Python side of the TensorRT plugins: op contracts, PyTorch reference, ONNX export, library loading."""
