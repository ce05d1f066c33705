"""Tiny random checkpoints in Hugging Face layout, written with transformers itself (peer format)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = {
    "llama": dict(architectures=["LlamaForCausalLM"], model_type="llama"),
    "llama3": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "qwen2": dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
    "qwen3": dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=24),
}


def hf_config(
    family: str,
    *,
    vocab: int = 97,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    tied: bool = False,
    **extra,
) -> dict:
    base = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=tied,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
    )
    return {**base, **FAMILIES[family], **extra}


def save_hf_target(directory: Path, family: str, seed: int = 0, **kwargs) -> Path:
    """Write a random target with transformers' own classes; returns the directory."""
    import transformers

    cfg_dict = hf_config(family, **kwargs)
    cls = getattr(transformers, cfg_dict["architectures"][0])
    config = transformers.AutoConfig.for_model(**cfg_dict)
    torch.manual_seed(seed)
    model = cls(config).float()
    with torch.no_grad():  # random norms and biases so that every weight matters
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def drafter_hf_config(
    target_cfg: dict,
    *,
    layers: int = 2,
    block_size: int = 8,
    layer_ids=(0, 2),
    mask_token_id: int = 5,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
) -> dict:
    return dict(
        architectures=["DFlashDraftModel"],
        model_type="qwen3",
        hidden_size=target_cfg["hidden_size"],
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=512,
        vocab_size=target_cfg["vocab_size"],
        attention_bias=False,
        hidden_act="silu",
        tie_word_embeddings=False,
        block_size=block_size,
        num_target_layers=target_cfg["num_hidden_layers"],
        dflash_config={"target_layer_ids": list(layer_ids), "mask_token_id": mask_token_id},
    )


def save_zlab_drafter(directory: Path, target_cfg: dict, seed: int = 1, **kwargs) -> Path:
    """Write a random drafter with the z-lab `dflash` package's own class."""
    from dflash.model import DFlashDraftModel
    from transformers import Qwen3Config

    cfg = drafter_hf_config(target_cfg, **kwargs)
    torch.manual_seed(seed)
    model = DFlashDraftModel(Qwen3Config(**cfg)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.2)
    model.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def save_tiny_tokenizer(directory: Path, vocab: int = 97) -> None:
    """A word-level tokenizer over `w0 .. w{vocab-4}` plus <unk>/<s>/</s>, with a minimal chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i + 3 for i in range(vocab - 3)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(directory)
