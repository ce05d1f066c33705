"""Step costs of this machine (a plain decoding step and a DFlash step at each block size), measured once per
machine, backend, model pair and batch and cached in `$DFLASH_TRT_CACHE/calibration.json` (default
~/.cache/dflash-trt), and the block size they recommend with the drafter's per-position acceptance
(`decoding.choice`). The steps are timed in rounds, each DFlash step right after a plain one, and a DFlash step's
cost is the median over rounds of its ratio to the plain step beside it, times the median plain step: a slow or
fast stretch of the machine moves both sides of a ratio alike, and one disturbed round does not choose the block.
Each entry also records a speed probe, the fastest of a few one-token decodes at a short context (~0.3 s); every
later use runs the probe again and measures the costs again when the machine now decodes more than `DRIFT` times
faster or slower (another process, a noisy neighbour on the host, a different power state), so costs taken in one
state of the machine do not choose the block in another.

A drafter directory (or an engine directory built from it) may ship `acceptance.json`:
{"position_acceptance": [P(accepted >= 1), ..., P(accepted >= B-1)], "measured_on": "..."}, greedy acceptance
on held-out prompts (`python -m dflash_trt.train.evaluate ... --write-acceptance DIR` writes it).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from dflash_trt.atomic import write_text_atomically
from dflash_trt.bench.reporting import others_busy_cores
from dflash_trt.config import read_json
from dflash_trt.decoding.choice import ACCEPTANCE_FILE, Choice, StepCosts, choose_block
from dflash_trt.decoding.runners import DrafterRunner
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.embedded import default_cache_dir
from dflash_trt.errors import UserError
from dflash_trt.parallel.comm import rank0_value
from dflash_trt.pipeline import Pipeline
from dflash_trt.timing import timed_rounds

CACHE_FILE = "calibration.json"
ROUNDS = 9
CALIBRATION_VERSION = 5  # part of every key: bump when the runners' kernels or what is measured change
# (2: prepacked fp32 linears; 3: whole steps in paired rounds; 4: oneDNN at 1-3 rows where it is faster;
# 5: the drafts' LM head prepacked, or over the drafter's draft vocabulary)
DRIFT = 1.3  # re-measure when the speed probe runs this many times faster or slower than when the entry was taken
PROBE_CONTEXT = 32
BUSY_CORES = 0.5  # warn that a calibration may not hold when other processes keep this many cores busy


@torch.inference_mode()
def step_costs(pipe: Pipeline, block: int, context: int = 256, repeats: int = 15) -> dict:
    """ms of a one-token decode, a B-token verify and a drafter pass at `context` tokens (fewer when the target
    holds fewer), batch 1, each the median of `repeats`: the parts of a step, for benchmark reports."""
    target, drafter = pipe.target, pipe.drafter
    context = min(context, target.capacity.max_len - block - 1)
    _prefilled(pipe, context, 1, block, drafter=True)
    blk = torch.full((1, block), drafter.mask_token_id)
    drafter.draft(blk)  # a backend may inject appended context at its next draft: keep it out of the timings
    calls = {
        "decode_ms": lambda: target.verify(blk[:, :1]),
        "verify_ms": lambda: target.verify(blk),
        "draft_ms": lambda: drafter.draft(blk),
    }
    times = timed_rounds(calls, repeats)
    out = {"block": block, "context": context, **{k: statistics.median(v) for k, v in times.items()}}
    out["verify_over_decode"] = out["verify_ms"] / out["decode_ms"]
    out["break_even_tau"] = (out["verify_ms"] + out["draft_ms"]) / out["decode_ms"]
    return out


def _prefilled(pipe: Pipeline, context: int, batch: int, block: int, drafter: bool = False) -> None:
    """Reset the target for `batch` rows of a random `context`-token prompt (+ `block` + 1) and prefill it; with
    `drafter`, the drafter's context too."""
    prompt = torch.randint(0, pipe.target.vocab_size, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    pipe.target.reset(batch, context + block + 1)
    features = pipe.target.prefill([prompt] * batch)[1]
    if drafter:
        pipe.drafter.reset(batch, context + block + 1)
        pipe.drafter.append_context(features, torch.full((batch,), context))


@torch.inference_mode()
def probe_ms(pipe: Pipeline, repeats: int = 5) -> float:
    """The speed probe: ms of the fastest of `repeats` one-token decodes (after two warm-ups) at `PROBE_CONTEXT`
    tokens, batch 1. The decode overwrites the same uncommitted position each time."""
    _prefilled(pipe, PROBE_CONTEXT, 1, 1)
    token = torch.zeros((1, 1), dtype=torch.long)
    return min(timed_rounds({"decode": lambda: pipe.target.verify(token)}, repeats)["decode"])


@torch.inference_mode()
def paired_step_costs(pipe: Pipeline, blocks: list[int], batch: int = 1, rounds: int = ROUNDS) -> StepCosts:
    """Costs of a plain decoding step and of a DFlash step at each of `blocks` for `batch` rows at a 256-token
    context, in paired rounds (see the module docstring). Every call commits nothing: the caches keep their
    lengths, so each round measures the same state."""
    target, drafter = pipe.target, pipe.drafter
    context = min(256, target.capacity.max_len - max(blocks) - 1)
    _prefilled(pipe, context, batch, max(blocks), drafter=True)
    greedy, nothing = SamplingParams(), torch.zeros(batch, dtype=torch.long)
    masks = {b: torch.full((batch, b), drafter.mask_token_id) for b in blocks}

    def decode() -> None:
        target.verify_and_accept(masks[blocks[0]][:, :1], None, greedy, None)

    def dflash(mask: Tensor) -> None:
        block = mask.clone()
        block[:, 1:] = drafter.draft_and_propose(block, greedy, None)[0]
        drafter.append_context(target.verify_and_accept(block, None, greedy, None)[2], nothing)

    calls = {}
    for b in blocks:
        calls[f"decode {b}"], calls[f"step {b}"] = decode, partial(dflash, masks[b])
    times = timed_rounds(calls, rounds)
    return paired_costs({b: times[f"decode {b}"] for b in blocks}, {b: times[f"step {b}"] for b in blocks})


def paired_costs(decodes: dict[int, list[float]], steps: dict[int, list[float]]) -> StepCosts:
    """StepCosts from per-round times: the median decode, and for each block that times the median over rounds
    of its step / the decode timed just before it."""
    decode_ms = statistics.median(t for ts in decodes.values() for t in ts)
    ratios = {b: statistics.median(s / d for s, d in zip(steps[b], decodes[b])) for b in steps}
    return StepCosts(decode_ms, {b: decode_ms * r for b, r in ratios.items()})


def read_acceptance(directory: Path | None) -> list[float] | None:
    """`position_acceptance` of DIRECTORY/acceptance.json, or None when there is none."""
    if directory is None or not (Path(directory) / ACCEPTANCE_FILE).is_file():
        return None
    path = Path(directory) / ACCEPTANCE_FILE
    values = read_json(path).get("position_acceptance")
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values):
        raise UserError(f"{path}: field 'position_acceptance' must be a list of probabilities")
    return [float(v) for v in values]


def machine_key() -> str:
    """What step costs depend on besides the models: CPU model, cores, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} x{torch.get_num_threads()}"


def cached_step_costs(
    pipe: Pipeline, label: str, blocks: list[int], log: Callable[[str], None], batch: int = 1
) -> StepCosts:
    """Step costs of `pipe` (`label`: backend and dtype) at `blocks` and `batch` rows, from the cache or measured
    and cached."""
    path = default_cache_dir() / CACHE_FILE
    key = f"{machine_key()} | {label} calibration v{CALIBRATION_VERSION} | batch {batch}"
    key += f" | {pipe.target_dir} | {pipe.drafter_dir}"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    entry = cache.get(key)
    stale = entry is None or not set(map(str, blocks)) <= set(entry["step_ms"])
    probe = probe_ms(pipe)
    if not stale and not 1 / DRIFT <= probe / entry.get("probe_ms", float("inf")) <= DRIFT:
        then = f"{entry['probe_ms']:.1f} ms" if "probe_ms" in entry else "unrecorded"
        log(f"a decode step takes {probe:.1f} ms now and took {then} when the step costs were cached: measuring again")
        stale = True
    if rank0_value(stale):  # under mpirun every rank measures, or none
        log(
            f"calibrating step costs once for this machine and {label}, batch {batch} (B={blocks[0]}..{blocks[-1]}); "
            f"cached in {path}"
        )
        busy = others_busy_cores()
        if busy >= BUSY_CORES:
            log(
                f"the machine is busy (other processes keep {busy:.1f} of {os.cpu_count()} cores busy): these costs, "
                "and the choice, may not hold when quiet"
            )
        start = time.perf_counter()
        costs = paired_step_costs(pipe, blocks, batch)
        entry = {
            "decode_ms": costs.decode_ms,
            "step_ms": {str(b): ms for b, ms in costs.step_ms.items()},
            "seconds": round(time.perf_counter() - start, 1),
            "busy_cores": round(busy, 2),
            "probe_ms": probe,
        }
        cache[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(cache, indent=2) + "\n")
    return StepCosts(entry["decode_ms"], {int(b): v for b, v in entry["step_ms"].items()})


def auto_block(
    pipe: Pipeline, label: str, log: Callable[[str], None], batch: int = 1, choice: Choice | None = None
) -> tuple[DrafterRunner | None, int | None]:
    """(drafter or None, block size) for `pipe` decoding `batch` rows together, as `choose_for` recommends (or
    `choice`, when it has been made already), saying which through `log`; (the drafter, None: its trained block
    size) when it ships no acceptance.json."""
    choice = choice or choose_for(pipe, label, log, batch)
    if choice is None:
        return pipe.drafter, None
    log(
        f"chose {choice.describe()} from the drafter's acceptance and this machine's step costs "
        f"({label}, batch {batch}); --block-size N or --no-drafter overrides"
    )
    return (pipe.drafter, choice.block) if choice.block else (None, None)


def choose_for(pipe: Pipeline, label: str, log: Callable[[str], None], batch: int = 1) -> Choice | None:
    """The recommended block size (or plain decoding) for `pipe` decoding `batch` rows together, or None when its
    drafter has no acceptance. (A verify of B tokens for b rows is a b*B-row GEMM: what pays at batch 1 may not
    at batch 4.)"""
    acceptance = read_acceptance(pipe.drafter_dir)
    if acceptance is None or pipe.drafter is None:
        return None
    blocks = list(range(2, min(pipe.drafter.block_size, len(acceptance) + 1) + 1))
    return rank0_value(choose_block(acceptance, cached_step_costs(pipe, label, blocks, log, batch)))


def choose_backend(
    candidates: dict[str, Callable[[], Pipeline]],
    log: Callable[[str], None],
    batch: int = 1,
    greedy: bool = True,
    refusal: Callable[[Pipeline], str | None] = lambda pipe: None,
) -> tuple[str, Pipeline, dict[str, float], Choice | None]:
    """The candidate (label -> loader, e.g. the same pair on torch and on onnxruntime) expected to generate fastest
    at `batch` rows: its label, its loaded pipeline, the expected ms per token of every candidate (empty when
    there was one) and its block choice (None when not made: sampling, no acceptance, one candidate). Candidates
    are compared by ms per token: greedy with a drafter that ships acceptance.json, that of the block choice on
    each (`choose_for`: DFlash at its best block, or plain decoding); else that of a plain decoding step (the speed
    probe). A candidate for which `refusal` gives a reason (the requests do not fit it) is not weighed. Loads one
    candidate at a time and keeps only the fastest; says which it chose through `log`."""
    if len(candidates) == 1:
        label, load = next(iter(candidates.items()))
        return label, load(), {}, None
    best: tuple[str, Pipeline, Choice | None] | None = None
    expected = {}
    for label, load in candidates.items():
        pipe = load()
        if reason := refusal(pipe):
            log(f"not weighing the {label} backend: {reason}")
            continue
        choice = choose_for(pipe, label, log, batch) if greedy else None
        expected[label] = choice.ms_per_token if choice else probe_ms(pipe)
        if best is None or expected[label] < expected[best[0]]:
            best = (label, pipe, choice)
        del pipe
    if best is None:
        raise UserError(reason)
    per_token = ", ".join(f"{label} {ms:.1f}" for label, ms in expected.items())
    log(f"chose the {best[0]} backend (expected ms per token at batch {batch}: {per_token}); --backend overrides")
    label, pipe, choice = best
    return label, pipe, expected, choice
