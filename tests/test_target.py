"""Target forward equals Hugging Face transformers (peer conformance) on every supported family."""

from __future__ import annotations

import pytest
import torch
import transformers

from dflash_trt.runtime.loading import load_target
from dflash_trt.runtime.torch import TorchTarget
from tiny import save_hf_target

CASES = [  # (family, tied, heads, kv_heads)
    ("llama", False, 4, 2),
    ("llama", True, 4, 4),
    ("llama3", False, 4, 1),
    ("llama3", True, 4, 2),
    ("qwen2", False, 4, 2),
    ("qwen2", True, 4, 4),
    ("qwen3", False, 4, 2),
    ("qwen3", True, 8, 2),
]


@pytest.mark.parametrize("family,tied,heads,kv_heads", CASES)
def test_logits_and_features_match_transformers(tmp_path, family, tied, heads, kv_heads):
    directory = save_hf_target(tmp_path, family, tied=tied, heads=heads, kv_heads=kv_heads)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ours = TorchTarget(load_target(directory), capture=(0, 2, 1))  # unsorted on purpose; HF normalises the last
    tokens = torch.randint(0, 97, (2, 150))  # longer than llama3's original context (64): scaling matters
    with torch.no_grad():
        ref = hf(tokens, output_hidden_states=True)
        ours.reset(2, 160)
        logits, features = ours.verify(tokens)
    assert (logits - ref.logits).abs().max() <= 1e-4
    expected = torch.cat([ref.hidden_states[i + 1] for i in (0, 2, 1)], dim=-1)
    assert (features - expected).abs().max() <= 1e-4


def test_sharded_checkpoint_with_index_loads(tmp_path):
    """A checkpoint split over several files with model.safetensors.index.json loads like a single file."""
    import json

    single = load_target(save_hf_target(tmp_path / "one", "qwen3"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    sharded = load_target(tmp_path / "sharded")
    for (name, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name


def test_incremental_ragged_decode_matches_full_forward(tmp_path):
    """Prefill of different prompt lengths, then chunks with partial commits, equals one full forward."""
    model = load_target(save_hf_target(tmp_path, "qwen2"))
    runner = TorchTarget(model)
    seqs = [torch.randint(0, 97, (40,)) for _ in range(3)]
    prompt_lens, max_len = [5, 12, 8], 64
    runner.reset(3, max_len)
    with torch.no_grad():
        runner.prefill([seqs[r][:n].tolist() for r, n in enumerate(prompt_lens)])
        committed = list(prompt_lens)
        for keep in ([3, 1, 4], [4, 4, 2], [1, 2, 3]):  # verify 4 tokens per row, keep a ragged prefix
            chunk = torch.stack([seqs[r][committed[r] : committed[r] + 4] for r in range(3)])
            logits, _ = runner.verify(chunk)
            for r in range(3):
                full = _full(model, seqs[r][: committed[r] + 4])
                assert (logits[r] - full[0, -4:]).abs().max() <= 1e-4
            runner.commit(torch.tensor(keep))
            committed = [c + k for c, k in zip(committed, keep)]


def test_forward_mutates_no_module_state(tmp_path):
    """The functional model: a forward returns the K/V it computed and leaves the module's state untouched."""
    model = load_target(save_hf_target(tmp_path, "qwen3"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    runner = TorchTarget(model, capture=(1,))
    runner.reset(2, 16)
    with torch.no_grad():
        runner.prefill([[3, 4, 5], [6, 7]])
        runner.verify(torch.tensor([[8, 9], [10, 11]]))
    assert set(vars(model)) == attrs and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not list(model.buffers())


def _full(model, seq):
    """Logits of a fresh single-row forward over a whole sequence, on a runner of its own."""
    runner = TorchTarget(model)
    runner.reset(1, len(seq))
    return runner.verify(seq[None])[0]


@pytest.mark.slow
def test_real_smollm2_matches_transformers():
    """The embedded SmolLM2-135M-Instruct: our logits equal HF transformers' on one chat prompt."""
    from dflash_trt.embedded import ensure_default_target

    directory = ensure_default_target()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a haiku about the sea."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=False,
    )
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ours = TorchTarget(load_target(directory))
    with torch.no_grad():
        ref = hf(ids).logits
        ours.reset(1, ids.shape[1])
        logits = ours.verify(ids)[0]
    assert (logits - ref).abs().max() <= 1e-4


def test_prefill_into_one_row_keeps_the_others(tmp_path):
    """In-flight batching: a new prompt restarts one row; the other rows' caches and outputs are untouched."""
    model = load_target(save_hf_target(tmp_path, "llama"))
    runner = TorchTarget(model)
    runner.reset(2, 32)
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(0, 97, (n,), generator=g).tolist() for n in (7, 5, 9))
    with torch.no_grad():
        runner.prefill([a, b])
        runner.verify(torch.tensor([[11, 12, 13], [14, 15, 16]]))
        runner.commit(torch.tensor([2, 3]))  # row 0 now holds a + [11, 12]
        runner.prefill([c], rows=[1])  # row 1 restarts with c
        logits, _ = runner.verify(torch.tensor([[21, 22], [23, 24]]))
        assert (logits[0] - _full(model, torch.tensor(a + [11, 12, 21, 22]))[0, -2:]).abs().max() <= 1e-4
        assert (logits[1] - _full(model, torch.tensor(c + [23, 24]))[0, -2:]).abs().max() <= 1e-4
