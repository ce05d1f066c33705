"""`dflash-trt build`: recipes, per-rank shape and memory plans, ONNX export, TensorRT / TensorRT-RTX builds and the
engine directory (`config.json`, `onnx/`, `target/` and `drafter/` engines, `build_report.json`)."""
