"""In-flight batching on the one speculative step: requests join rows mid-decode and leave them, and every
request's greedy output equals its own `generate` run; per-request sampling parameters share a batch."""

from __future__ import annotations

import pytest
import torch

from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, SpeculativeBatch, generate
from dflash_trt.errors import UserError
from dflash_trt.pipeline import torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from tiny import hf_config, save_hf_target, save_zlab_drafter


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("inflight")
    target = load_target(save_hf_target(root / "t", "llama"))
    drafter = load_drafter(
        save_zlab_drafter(root / "d", hf_config("llama"), block_size=8, layer_ids=(0, 2)), target.cfg
    )
    return torch_runners(target, drafter)


def _requests(n: int, seed: int) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    return [
        Request(torch.randint(0, 97, (int(k),), generator=g).tolist(), int(m))
        for k, m in zip(torch.randint(1, 20, (n,), generator=g), torch.randint(5, 30, (n,), generator=g))
    ]


def _drive(batch: SpeculativeBatch, arrivals: dict[int, list[Request]], limit: int = 500) -> dict[int, list[int]]:
    """Step the batch; at step s the requests in arrivals[s] join free rows. Returns tokens per request index."""
    out: dict[int, list[int]] = {}
    owner: dict[int, int] = {}  # row -> request index
    queue, index = [], 0
    for step in range(limit):
        for r in arrivals.get(step, []):
            queue.append((index, r))
            index += 1
        free = batch.free_rows()
        joining = queue[: len(free)]
        queue = queue[len(joining) :]
        if joining:
            rows = free[: len(joining)]
            for row, (i, _) in zip(rows, joining):
                owner[row] = i
            batch.add([r for _, r in joining], rows)
        for row in [r for r in owner if not batch.active[r]]:  # finished at prefill or last step
            out[owner.pop(row)] = batch.remove(row).tokens
        if not owner and not queue and step > max(arrivals):
            return out
        batch.step()
    raise AssertionError("the batch did not drain within the step limit")


@pytest.mark.parametrize("with_drafter", [True, False])
def test_requests_joining_mid_decode_equal_their_own_generate(pair, with_drafter):
    target, drafter = pair
    drafter = drafter if with_drafter else None
    reqs = _requests(7, seed=3)
    expected = [generate(target, drafter, [r])[0].tokens for r in reqs]
    batch = SpeculativeBatch(target, drafter, batch=3, max_len=80)
    arrivals = {0: reqs[:2], 2: reqs[2:4], 3: reqs[4:5], 9: reqs[5:]}  # more arrivals than rows: they queue
    got = _drive(batch, arrivals)
    assert [got[i] for i in range(len(reqs))] == expected


def test_per_request_sampling_in_one_batch(pair):
    """Greedy rows stay exact beside a sampled row; the seeded row is reproducible and really samples."""
    target, drafter = pair
    reqs = _requests(3, seed=5)
    seeded = Request(reqs[1].prompt, 20, params=SamplingParams(temperature=1.0, top_k=20, seed=11))
    greedy = [generate(target, drafter, [r])[0].tokens for r in (reqs[0], Request(reqs[1].prompt, 20), reqs[2])]
    runs = []
    for _ in range(2):
        batch = SpeculativeBatch(target, drafter, batch=3, max_len=80)
        got = _drive(batch, {0: [seeded, reqs[0], reqs[2]]})
        assert got[1] == greedy[0] and got[2] == greedy[2]
        runs.append(got[0])
    assert runs[0] == runs[1] and len(runs[0]) == 20
    assert runs[0] != greedy[1]


def test_removed_row_is_reused(pair):
    target, drafter = pair
    reqs = _requests(2, seed=9)
    batch = SpeculativeBatch(target, drafter, batch=1, max_len=80)
    batch.add([Request(reqs[0].prompt, 40)], [0])
    batch.step()
    batch.remove(0)  # cancelled mid-decode
    assert batch.free_rows() == [0] and not batch.active_rows()
    assert _drive(batch, {0: [reqs[1]]})[0] == generate(target, drafter, [reqs[1]])[0].tokens


def test_request_beyond_the_rows_length_is_refused(pair):
    target, drafter = pair
    batch = SpeculativeBatch(target, drafter, batch=2, max_len=40)
    with pytest.raises(UserError, match="max_len 40"):
        batch.check(Request([1] * 30, 10))


def test_inflight_rows_on_the_onnxruntime_backend(pair, tmp_path):
    """The same in-flight driving on the onnxruntime runners of an exported engine directory (the CPU twin of the
    engines): every request equals its own torch `generate`."""
    from dflash_trt.runtime.onnxruntime import load_engine
    from ort_engine import make_engine_dir

    target, drafter = pair
    root = tmp_path
    t_dir = save_hf_target(root / "t", "llama")
    d_dir = save_zlab_drafter(root / "d", hf_config("llama"), block_size=8, layer_ids=(0, 2))
    engine = make_engine_dir(root / "engine", target_dir=t_dir, drafter_dir=d_dir, max_batch=3, max_seq_len=96)
    ort_target, ort_drafter, _ = load_engine(engine)
    reqs = _requests(5, seed=4)
    expected = [generate(target, drafter, [r])[0].tokens for r in reqs]
    batch = SpeculativeBatch(ort_target, ort_drafter, batch=3, max_len=80)
    got = _drive(batch, {0: reqs[:2], 2: reqs[2:4], 5: reqs[4:]})
    assert [got[i] for i in range(len(reqs))] == expected
    with pytest.raises(UserError, match="at most 3 rows"):
        SpeculativeBatch(ort_target, ort_drafter, batch=4, max_len=80)
