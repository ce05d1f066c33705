"""Run under mpirun by test_tensor_parallel: load this rank's shards of a converted checkpoint, run one
prefill / draft / verify on fixed inputs, and (rank 0) save the logits for comparison with tp=1."""

from __future__ import annotations

import sys

import torch

from dflash_trt.parallel.comm import init_distributed
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_converted


def run(checkpoint: str, mapping=None) -> dict[str, torch.Tensor]:
    target_model, drafter_model, target_cfg = load_converted(checkpoint, mapping)
    target, drafter = torch_runners(target_model, drafter_model, vocab_size=target_cfg.vocab_size)
    prompts = [[3, 14, 15, 92, 65], [35, 89, 79]]
    target.reset(2, 32)
    drafter.reset(2, 32)
    with torch.no_grad():
        prefill_logits, features = target.prefill(prompts)
        drafter.append_context(features, torch.tensor([5, 3]))
        block = torch.tensor([[7] + [drafter.mask_token_id] * 7, [11] + [drafter.mask_token_id] * 7])
        draft_logits = drafter.draft(block)
        verify_logits, _ = target.verify(block)
    return {"prefill": prefill_logits, "draft": draft_logits, "verify": verify_logits}


if __name__ == "__main__":
    mapping = init_distributed()
    out = run(sys.argv[1], mapping)
    if mapping.is_first:
        torch.save(out, sys.argv[2])
