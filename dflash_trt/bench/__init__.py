"""Benchmarks: the `dflash-trt bench` command (cli), its prompt sets (datasets), the peer implementations it
runs side by side (peers) and the JSON + Markdown + PNG reports every benchmark writes (reporting)."""
