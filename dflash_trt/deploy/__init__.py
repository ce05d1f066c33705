"""Deployment: trtllm-serve configs with a per-rank GPU memory plan, Triton model repositories (TensorRT-LLM's
LLM-API backend, or a Python-backend model serving the pair through this project's runtime with in-flight
batching), and a launcher for the real Triton server of the `nvidia-pytriton` wheel."""
