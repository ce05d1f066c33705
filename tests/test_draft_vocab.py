"""A reduced draft vocabulary (draft_vocab.json): drafts only take its tokens, its logits are the full head's rows,
greedy output stays the target's on many shapes, sampling stays lossless, bad files are named, and
`python -m dflash_trt.train.draft_vocab` ranks tokens by their frequency in real training shards and a corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import distribution
from dflash_trt.config import DRAFT_VOCAB_FILE
from dflash_trt.decoding.sampling import SamplingParams
from dflash_trt.decoding.speculative import Request, generate
from dflash_trt.errors import UserError
from dflash_trt.pipeline import load_engine_pipeline, torch_runners
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.train import draft_vocab
from dflash_trt.train.shards import Sequence, write_shard
from ort_engine import make_engine_dir
from tiny import hf_config, save_hf_target, save_tiny_tokenizer, save_zlab_drafter

VOCAB = 97
KEPT = sorted(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:40].tolist())


def _write_vocab(drafter_dir: Path, ids: list[int]) -> None:
    (drafter_dir / DRAFT_VOCAB_FILE).write_text(json.dumps({"token_ids": ids}))


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def dirs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"vocab-{request.param}")
    target = save_hf_target(root / "t", request.param)
    save_tiny_tokenizer(target)  # an engine directory carries one
    full = save_zlab_drafter(root / "d", hf_config(request.param), block_size=16, layer_ids=(0, 2))
    pruned = shutil.copytree(full, root / "d-vocab")
    _write_vocab(pruned, KEPT)
    return target, full, pruned


def _runners(target_dir: Path, drafter_dir: Path):
    model = load_target(target_dir)
    return torch_runners(model, load_drafter(drafter_dir, model.cfg))


def _requests(batch: int, seed: int) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 20, (batch,), generator=g)
    return [Request(torch.randint(0, VOCAB, (int(n),), generator=g).tolist(), 24, ()) for n in lens]


def _draft_logits(target, drafter, prompts: list[list[int]], anchors: list[int]) -> torch.Tensor:
    """`drafter`'s logits for blocks [anchor, MASK x 7] right after the target prefilled `prompts`."""
    target.reset(len(prompts), 32)
    drafter.reset(len(prompts), 32)
    _, features = target.prefill(prompts)
    drafter.append_context(features, torch.tensor([len(p) for p in prompts]))
    return drafter.draft(torch.tensor([[a] + [drafter.mask_token_id] * 7 for a in anchors]))


def _assert_full_head_rows_on_vocab(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """`got` (drafting from KEPT) equals the full head's `want` on KEPT and is -inf on every other token."""
    torch.testing.assert_close(got[..., KEPT], want[..., KEPT], rtol=tol, atol=tol)
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[KEPT] = False
    assert torch.isneginf(got[..., outside]).all()


def test_draft_logits_are_the_full_heads_rows_and_minus_infinity_elsewhere(dirs):
    target_dir, full_dir, pruned_dir = dirs
    (target, full), (_, pruned) = _runners(target_dir, full_dir), _runners(target_dir, pruned_dir)
    assert pruned.vocab.tolist() == KEPT and pruned.head.head.out_features == len(KEPT)
    want, got = (_draft_logits(target, d, [[3, 14, 15, 9, 2, 6]], [5]) for d in (full, pruned))
    _assert_full_head_rows_on_vocab(got, want, tol=1e-5)


@pytest.mark.parametrize("block", [2, 5, 16])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_with_a_draft_vocab_equals_autoregressive(dirs, block, batch):
    target_dir, _, pruned_dir = dirs
    target, drafter = _runners(target_dir, pruned_dir)
    drafts = []
    original = drafter.draft
    drafter.draft = lambda b: drafts.append(logits := original(b)) or logits  # spy on the real drafter
    requests = _requests(batch, seed=block * 10 + batch)
    ar = generate(target, None, requests)
    spec = generate(target, drafter, requests, block_size=block)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]
    assert drafts and all(set(d.argmax(-1).flatten().tolist()) <= set(KEPT) for d in drafts)


@pytest.fixture(scope="module")
def engine(dirs, tmp_path_factory):
    """An engine directory (the onnxruntime graphs) of the pair with the draft vocabulary."""
    target_dir, _, pruned_dir = dirs
    return make_engine_dir(tmp_path_factory.mktemp("vocab-engine"), target_dir=target_dir, drafter_dir=pruned_dir)


def test_the_exported_drafter_graph_drafts_from_the_vocab(dirs, engine):
    """onnxruntime's drafter graph: its logits are the torch full head's rows on the vocabulary, -inf elsewhere,
    and its draft tokens lie in the vocabulary."""
    target_dir, full_dir, _ = dirs
    target, full = _runners(target_dir, full_dir)
    ort = load_engine_pipeline(engine).drafter
    assert ort.vocab.tolist() == KEPT
    prompts, anchors = [[3, 14, 15, 9, 2, 6], [3, 14, 15, 9]], [5, 11]
    want, got = (_draft_logits(target, d, prompts, anchors) for d in (full, ort))
    _assert_full_head_rows_on_vocab(got, want, tol=1e-4)
    block = torch.tensor([[a] + [ort.mask_token_id] * 7 for a in anchors])
    tokens, _ = ort.draft_and_propose(block, SamplingParams(), None)  # the graph's own draft_tokens output
    assert tokens.tolist() == got.argmax(-1).tolist() and set(tokens.flatten().tolist()) <= set(KEPT)


@pytest.mark.parametrize("block", [3, 8])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_greedy_with_a_draft_vocab_equals_autoregressive(engine, block, batch):
    pipe = load_engine_pipeline(engine)
    requests = _requests(batch, seed=block * 7 + batch)
    ar = generate(pipe.target, None, requests)
    spec = generate(pipe.target, pipe.drafter, requests, block_size=block)
    assert [g.tokens for g in spec] == [g.tokens for g in ar]


def test_sampling_with_a_draft_vocab_keeps_the_target_distribution(tmp_path):
    """The drafter proposes from 4 of 8 tokens; the target's own distribution over 3 tokens comes out."""
    vocab = 8
    target = load_target(save_hf_target(tmp_path / "t", "llama", vocab=vocab, hidden=32, layers=2))
    cfg = hf_config("llama", vocab=vocab, hidden=32, layers=2)
    drafter_dir = save_zlab_drafter(tmp_path / "d", cfg, block_size=4, layer_ids=(0, 1), mask_token_id=7)
    _write_vocab(drafter_dir, [1, 2, 4, 6])
    drafter = load_drafter(drafter_dir, target.cfg)
    with torch.no_grad():  # sharpen the random target so that top-k actually cuts tokens
        target.lm_head.weight.mul_(4.0)
    target_runner, drafter_runner = torch_runners(target, drafter)
    params, prompt = SamplingParams(temperature=1.0, top_k=6, seed=11), [1, 4, 6]
    counts, gens = distribution.sample_counts(target_runner, drafter_runner, params, prompt, vocab, 6000)
    assert 0.05 < sum(g.step_lengths[0] > 1 for g in gens) / len(gens) < 0.95  # accepts and rejects
    want = distribution.exact_joint(target_runner, params, prompt, vocab)
    assert distribution.chi_square_pvalue(counts, want) > 1e-4


@pytest.mark.parametrize(
    "doc",
    [{"token_ids": [1, 2, VOCAB]}, {"token_ids": [4, 4]}, {"token_ids": []}, {"ids": [1]}, {"token_ids": [1.5]}],
)
def test_a_bad_draft_vocab_is_named(dirs, tmp_path, doc):
    target_dir, full_dir, _ = dirs
    bad = shutil.copytree(full_dir, tmp_path / "d")
    (bad / DRAFT_VOCAB_FILE).write_text(json.dumps(doc))
    with pytest.raises(UserError, match=f"{DRAFT_VOCAB_FILE}: field 'token_ids'"):
        load_drafter(bad, load_target(target_dir).cfg)


def _shard(path: Path, sequences: list[tuple[list[int], int]]) -> None:
    """Sequences (labels, response start) as a generated-data shard."""
    seqs = [
        Sequence(torch.tensor(labels), torch.tensor(labels), torch.zeros(len(labels), 4), start, "gen")
        for labels, start in sequences
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_shard(path, seqs, (0, 1), "gen")


def _data(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    data, drafter, target = tmp_path / "data", tmp_path / "drafter", tmp_path / "target"
    drafter.mkdir()
    (drafter / "config.json").write_text(json.dumps({"vocab_size": 12}))
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"vocab_size": 12}))
    save_tiny_tokenizer(target, vocab=12)  # w0 .. w8 are ids 3 .. 11
    # prompts (before each start) are full of 9s, which must not count; responses: 7 x5, 3 x4, 5 x2, 8 x1
    _shard(data / "train" / "shard-00000.safetensors", [([9, 9, 9, 7, 7, 3, 5], 3), ([9, 7, 3, 3, 8], 1)])
    _shard(data / "train" / "shard-00001.safetensors", [([9, 9, 7, 7, 3, 5], 2)])
    _shard(data / "val" / "shard-00000.safetensors", [([9, 7, 3, 8, 8], 1)])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("w1 w1\nw1 w1\n")  # id 4, four times: the whole corpus
    args = ["--data", str(data), "--out", str(drafter), "--target", str(target), "--corpus", str(corpus)]
    return data, drafter, args


@pytest.mark.parametrize(
    ("size", "ids", "train", "heldout"),
    [(2, [4, 7], 5 / 12, 1 / 4), (5, [3, 4, 5, 7, 8], 1.0, 1.0), (7, [0, 1, 3, 4, 5, 7, 8], 1.0, 1.0)],
)
def test_draft_vocab_ranks_an_equal_mix_of_answer_and_corpus_frequencies(tmp_path, size, ids, train, heldout):
    """Shares in the mix: id 4 1/2 (all of the corpus), 7 5/24, 3 4/24, 5 2/24, 8 1/24; then the lowest ids."""
    data, drafter, args = _data(tmp_path)
    assert draft_vocab.main([*args, "--size", str(size)]) == 0
    doc = json.loads((drafter / DRAFT_VOCAB_FILE).read_text())
    assert doc["token_ids"] == ids and doc["size"] == size
    assert doc["coverage"] == {"train": round(train, 5), "heldout": round(heldout, 5)}
    assert "(12 tokens)" in doc["source"] and "--corpus (4 tokens; files: 1)" in doc["source"]


@pytest.mark.parametrize("size", [0, 12])
def test_draft_vocab_refuses_a_size_outside_the_vocab(tmp_path, capsys, size):
    data, drafter, args = _data(tmp_path)
    assert draft_vocab.main([*args, "--size", str(size)]) == 2
    assert f"--size {size}: pick 1..11" in capsys.readouterr().err
    assert not (drafter / DRAFT_VOCAB_FILE).exists()
