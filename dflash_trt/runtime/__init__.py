"""Runtime backends: they own every buffer (KV caches, lengths, RoPE tables) and implement the runner
contract of `dflash_trt.decoding.runners` over the functional models (torch) or exported graphs."""
