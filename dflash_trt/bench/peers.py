"""Peer implementations run side by side with ours in `dflash-trt bench`, on the same weights and prompts:
z-lab's `dflash` package (`dflash_generate`), and HF transformers' greedy `generate` with a static cache and with
prompt-lookup decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dflash_trt.errors import UserError


@dataclass
class PeerRun:
    tokens: list[int]
    seconds: float  # wall time of the whole call, prefill included
    target_forwards: int  # verify/decode calls after prefill (tau = len(tokens) / target_forwards)


class _ForwardCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


class HFTarget:
    """The target loaded by HF transformers (used by both peers)."""

    def __init__(self, target_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32).eval()
        self.counter = _ForwardCounter(self.model)

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...], **options) -> PeerRun:
        """Greedy HF `generate` with `options` (e.g. `cache_implementation="static"`)."""
        ids = torch.tensor([prompt])
        self.counter.calls = 0
        start = time.perf_counter()
        out = self.model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=stop_ids[0] if stop_ids else 0,
            **options,
        )
        seconds = time.perf_counter() - start
        return PeerRun(out[0, len(prompt) :].tolist(), seconds, self.counter.calls - 1)

    def static_cache(self, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...]) -> PeerRun:
        """Plain greedy decoding with transformers' static (fixed-shape, preallocated) KV cache."""
        return self.generate(prompt, max_new_tokens, stop_ids, cache_implementation="static")

    def prompt_lookup(
        self, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...], lookup_tokens: int = 10
    ) -> PeerRun:
        """Greedy prompt-lookup decoding (n-gram drafts from the prompt)."""
        return self.generate(prompt, max_new_tokens, stop_ids, prompt_lookup_num_tokens=lookup_tokens)


class ZLabDFlash:
    """z-lab's reference loop (`dflash.model.dflash_generate`, batch 1) with its own drafter class: the one the
    checkpoint's `architectures` names (`DFlashDraftModel` or `DFlash2DraftModel`)."""

    def __init__(self, target: HFTarget, drafter_dir: Path) -> None:
        try:
            from dflash import model as zlab
        except ImportError:
            raise UserError("--compare-zlab needs z-lab's package: pip install --no-deps dflash==0.1.0") from None
        from dflash_trt.config import DRAFTER_ARCHITECTURES, read_json

        archs = read_json(Path(drafter_dir) / "config.json").get("architectures") or ["DFlashDraftModel"]
        name = next((a for a in archs if a in DRAFTER_ARCHITECTURES), "DFlashDraftModel")
        self.target = target
        self.drafter = getattr(zlab, name).from_pretrained(str(drafter_dir), dtype=torch.float32).eval()

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, stop_ids: tuple[int, ...], block_size: int) -> PeerRun:
        from dflash.model import dflash_generate

        self.target.counter.calls = 0
        start = time.perf_counter()
        out = dflash_generate(
            self.drafter,
            self.target.model,
            torch.tensor([prompt]),
            max_new_tokens,
            list(stop_ids),
            temperature=0.0,
            block_size=block_size,
        )
        seconds = time.perf_counter() - start
        return PeerRun(out[0, len(prompt) :].tolist(), seconds, self.target.counter.calls - 1)
