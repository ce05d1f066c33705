"""Make training data: the frozen target's features and labels, cached per sequence in shards.

Two sources, both labelled by the target itself:
- generated: the target answers prompts (greedy or sampled, on any backend: torch, or onnxruntime on an engine
  directory's graphs), a batch of rows decoding together with in-flight refill (`SpeculativeBatch`); the response
  tokens are the labels and the features are recorded during decoding, with no second pass.
- teacher-forced: one target forward over real text gives the features and the target's greedy
  prediction at every position (the labels).
Each shard is written atomically and skipped when it already exists, so an interrupted run resumes.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from dflash_trt.decoding.runners import Features, TargetRunner
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, SpeculativeBatch, check_request
from dflash_trt.models.target import Transformer
from dflash_trt.runtime.torch import TorchTarget
from dflash_trt.train.shards import Sequence, write_shard


class RecordingTarget(TargetRunner):
    """Wraps a target runner of any backend and keeps the features of every committed position, per row."""

    def __init__(self, runner: TargetRunner) -> None:
        self.runner = runner
        self.device, self.capacity = runner.device, runner.capacity

    def reset(self, batch: int, max_len: int) -> None:
        self.runner.reset(batch, max_len)
        self.rows: list[list[Tensor]] = [[] for _ in range(batch)]
        self.pending: Tensor | None = None

    def prefill(self, prompts: list[list[int]], rows: list[int] | None = None) -> tuple[Tensor, Features]:
        logits, features = self.runner.prefill(prompts, rows)
        features = torch.as_tensor(features)
        for i, (row, prompt) in enumerate(zip(rows or range(len(prompts)), prompts)):
            self.rows[row] = [features[i, : len(prompt)].half()]  # a refilled row starts a new record
        return logits, features

    def verify(self, block: Tensor) -> tuple[Tensor, Features]:
        logits, features = self.runner.verify(block)
        self.pending = torch.as_tensor(features)
        return logits, self.pending

    def commit(self, n: Tensor) -> None:
        self.runner.commit(n)
        for row, k in enumerate(n.tolist()):
            if k:
                self.rows[row].append(self.pending[row, :k].half())

    def features(self, row: int, length: int) -> Tensor:
        """Row's recorded features padded with zeros to `length` positions (the last token has none yet)."""
        f = torch.cat(self.rows[row])
        return torch.cat([f, f.new_zeros(length - len(f), f.shape[1])])


@torch.inference_mode()
def generate_shard(
    target: TargetRunner,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: tuple[int, ...],
    params: SamplingParams,
    batch_size: int,
) -> list[Sequence]:
    """Let the target (a runner of any backend, capturing the layers the drafter reads) answer `prompts` on
    `batch_size` rows with in-flight refill: a row whose answer ends takes the next prompt at the next step, so no
    row idles until the others finish. One Sequence (prompt + response) per prompt, in order, with the captured
    features."""
    requests = [Request(p, max_new_tokens, stop_ids) for p in prompts]
    for i, r in enumerate(requests):
        check_request(r, 1, target.capacity.max_len, target.capacity.max_len_field, f"prompt {i}")
    runner = RecordingTarget(target)
    queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # pop(): shortest first, alike together
    rows = min(batch_size, len(prompts))
    batch = SpeculativeBatch(runner, None, rows, max(map(len, prompts)) + max_new_tokens + 1, params=params)
    held = {row: queue.pop() for row in range(rows)}  # row -> the prompt it answers
    batch.add([requests[i] for i in held.values()])
    seqs: list[Sequence | None] = [None] * len(prompts)
    while held:
        active = batch.active_rows()
        done = [row for row in held if row not in active]  # ended at the last step (or at its prefill)
        for row in done:
            i, gen = held.pop(row), batch.remove(row)
            tokens = torch.tensor(prompts[i] + gen.tokens)
            seqs[i] = Sequence(tokens, tokens.clone(), runner.features(row, len(tokens)), len(prompts[i]))
        refill = done[: len(queue)]
        for row in refill:
            held[row] = queue.pop()
        if refill:
            batch.add([requests[held[row]] for row in refill], refill)
        elif held:
            batch.step()
    return seqs


@torch.inference_mode()
def teacher_force(
    target: Transformer, layer_ids: tuple[int, ...], windows: list[list[int]], batch_size: int, first_anchor: int
) -> list[Sequence]:
    """Features of `layer_ids` and the target's greedy next-token labels over real-text windows."""
    runner = TorchTarget(target, layer_ids)
    seqs = []
    for lo in range(0, len(windows), batch_size):
        chunk = windows[lo : lo + batch_size]
        width = max(len(w) for w in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, w in enumerate(chunk):
            tokens[row, : len(w)] = torch.tensor(w)
        runner.reset(len(chunk), width)
        logits, features = runner.verify(tokens)
        preds = logits.argmax(-1)
        for row, w in enumerate(chunk):
            n = len(w)
            labels = torch.cat([tokens[row, :1], preds[row, : n - 1]])
            seqs.append(Sequence(tokens[row, :n], labels, features[row, :n].half(), first_anchor))
    return seqs


def text_windows(texts: list[str], tokenizer, window: int, min_len: int) -> list[list[int]]:
    """Token windows of up to `window` tokens cut from each text; shorter tails below `min_len` are dropped."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        out += [ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) >= min_len]
    return out


def encode_prompts(tokenizer, prompts: list[tuple[str, bool]], max_len: int) -> list[list[int]]:
    """Token ids of each (text, use_chat_template) prompt, cut to its last `max_len` tokens."""
    out = []
    for text, chat in prompts:
        if chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        out.append(tokenizer(text, add_special_tokens=False).input_ids[-max_len:])
    return out


def write_shards(
    out_dir: Path, kind: str, items: list, shard_size: int, layer_ids: tuple[int, ...], make, first: int = 0
) -> int:
    """Write `make(items[k*shard_size:...])` to shard-{kind}-{first+k}; skip existing shards. Returns shards written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    n_shards = (len(items) + shard_size - 1) // shard_size
    for k in tqdm(range(n_shards), desc=f"data {kind}", unit="shard"):
        path = out_dir / f"shard-{kind}-{first + k:05d}.safetensors"
        if path.exists():
            continue
        write_shard(path, make(items[k * shard_size : (k + 1) * shard_size]), layer_ids, kind)
        written += 1
    return written


def shuffled(items: list, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items
