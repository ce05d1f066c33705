"""Load targets and drafters from local Hugging Face directories (`config.json` + safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from dflash_trt.config import DrafterConfig, TargetConfig, check_pair, read_json
from dflash_trt.errors import UserError
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.target import Transformer

INDEX = "model.safetensors.index.json"


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of an HF directory: the sharded index's files, else `*.safetensors`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory; pass a local Hugging Face model directory")
    if (directory / INDEX).is_file():
        weight_map = read_json(directory / INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{directory / INDEX}: missing 'weight_map'; restore the index file")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: listed in {INDEX} but missing; download the missing shard")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"{directory}: no *.safetensors weights found; convert the checkpoint to safetensors")
    return files


def read_tensors(directory: Path) -> dict[str, Tensor]:
    """All tensors of an HF directory, each file checked for truncation or corruption."""
    tensors: dict[str, Tensor] = {}
    for path in safetensors_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable safetensors file ({exc}); the file is truncated or corrupt") from None
    return tensors


def _take(tensors: dict[str, Tensor], name: str, shape: tuple[int, ...], source: Path) -> Tensor:
    if name not in tensors:
        raise UserError(f"{source}: tensor '{name}' is missing; the checkpoint does not match its config.json")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise UserError(f"{source}: tensor '{name}' has shape {list(t.shape)}, config.json implies {list(shape)}")
    return t


def _attention_state(take, prefix: str, out: str, hidden: int, heads: int, kv: int, d: int,
                     bias: bool, qk_norm: bool) -> dict[str, Tensor]:
    """Fuse HF q/k/v projections into `wqkv`; carry o_proj and optional q/k norms and qkv bias."""
    state = {
        f"{out}.wqkv.weight": torch.cat([take(f"{prefix}.q_proj.weight", (heads * d, hidden)),
                                         take(f"{prefix}.k_proj.weight", (kv * d, hidden)),
                                         take(f"{prefix}.v_proj.weight", (kv * d, hidden))]),
        f"{out}.wo.weight": take(f"{prefix}.o_proj.weight", (hidden, heads * d)),
    }
    if bias:
        state[f"{out}.wqkv.bias"] = torch.cat([take(f"{prefix}.q_proj.bias", (heads * d,)),
                                               take(f"{prefix}.k_proj.bias", (kv * d,)),
                                               take(f"{prefix}.v_proj.bias", (kv * d,))])
    if qk_norm:
        state[f"{out}.q_norm.weight"] = take(f"{prefix}.q_norm.weight", (d,))
        state[f"{out}.k_norm.weight"] = take(f"{prefix}.k_norm.weight", (d,))
    return state


def _block_state(take, prefix: str, out: str, hidden: int, ffn: int) -> dict[str, Tensor]:
    return {
        f"{out}.attn_norm.weight": take(f"{prefix}.input_layernorm.weight", (hidden,)),
        f"{out}.mlp_norm.weight": take(f"{prefix}.post_attention_layernorm.weight", (hidden,)),
        f"{out}.mlp.w13.weight": torch.cat([take(f"{prefix}.mlp.gate_proj.weight", (ffn, hidden)),
                                            take(f"{prefix}.mlp.up_proj.weight", (ffn, hidden))]),
        f"{out}.mlp.w2.weight": take(f"{prefix}.mlp.down_proj.weight", (hidden, ffn)),
    }


def target_state_dict(cfg: TargetConfig, tensors: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    """Map HF Llama/Qwen2/Qwen3 names onto `Transformer` parameters."""
    def take(name: str, shape: tuple[int, ...]) -> Tensor:
        return _take(tensors, name, shape, source)

    h = cfg.hidden_size
    state = {"embed.weight": take("model.embed_tokens.weight", (cfg.vocab_size, h)),
             "norm.weight": take("model.norm.weight", (h,))}
    tied = cfg.tie_word_embeddings
    state["lm_head.weight"] = state["embed.weight"] if tied else take("lm_head.weight", (cfg.vocab_size, h))
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}"
        state |= _attention_state(take, f"{p}.self_attn", f"layers.{i}.attn", h, cfg.num_heads, cfg.num_kv_heads,
                                  cfg.head_dim, cfg.qkv_bias, cfg.qk_norm)
        state |= _block_state(take, p, f"layers.{i}", h, cfg.intermediate_size)
    return state


def drafter_state_dict(cfg: DrafterConfig, tensors: dict[str, Tensor], source: Path) -> dict[str, Tensor]:
    """Map z-lab drafter names (`fc`, `hidden_norm`, `layers.*`, `norm`) onto `DFlashDrafter` parameters."""
    def take(name: str, shape: tuple[int, ...]) -> Tensor:
        return _take(tensors, name, shape, source)

    h = cfg.hidden_size
    state = {"fc.weight": take("fc.weight", (h, len(cfg.target_layer_ids) * h)),
             "hidden_norm.weight": take("hidden_norm.weight", (h,)),
             "norm.weight": take("norm.weight", (h,))}
    for i in range(cfg.num_layers):
        state |= _attention_state(take, f"layers.{i}.self_attn", f"layers.{i}.attn", h, cfg.num_heads,
                                  cfg.num_kv_heads, cfg.head_dim, cfg.qkv_bias, True)
        state |= _block_state(take, f"layers.{i}", f"layers.{i}", h, cfg.intermediate_size)
    return state


def load_target(directory: Path, dtype: torch.dtype = torch.float32) -> Transformer:
    directory = Path(directory)
    cfg = TargetConfig.from_dir(directory)
    model = Transformer(cfg)
    model.load_state_dict(target_state_dict(cfg, read_tensors(directory), directory), strict=True)
    return model.to(dtype).eval()


def load_drafter(directory: Path, target: Transformer, dtype: torch.dtype = torch.float32) -> DFlashDrafter:
    """Load a z-lab drafter, check it fits `target`, and bind the target's embedding and LM head."""
    directory = Path(directory)
    cfg = DrafterConfig.from_dir(directory)
    check_pair(target.cfg, cfg, str(directory / "config.json"))
    model = DFlashDrafter(cfg)
    model.load_state_dict(drafter_state_dict(cfg, read_tensors(directory), directory))
    model.bind(target.embed, target.lm_head)
    target.capture_layers = cfg.target_layer_ids
    return model.to(dtype).eval()


def _converted_layers(tensors: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """TensorRT-LLM layer names (dflash_trt.checkpoint.layout) onto our fused parameter names."""
    state = {}
    for i in range(num_layers):
        src, dst = f"transformer.layers.{i}.", f"layers.{i}."
        renames = {"attention.qkv.weight": "attn.wqkv.weight", "attention.qkv.bias": "attn.wqkv.bias",
                   "attention.q_layernorm.weight": "attn.q_norm.weight",
                   "attention.k_layernorm.weight": "attn.k_norm.weight", "attention.dense.weight": "attn.wo.weight",
                   "mlp.proj.weight": "mlp.w2.weight", "input_layernorm.weight": "attn_norm.weight",
                   "post_layernorm.weight": "mlp_norm.weight"}
        state |= {dst + new: tensors[src + old] for old, new in renames.items() if src + old in tensors}
        # TRT-LLM's GatedMLP: mlp.fc is gate_proj (activated), mlp.gate is up_proj; our w13 is [gate; up].
        state[dst + "mlp.w13.weight"] = torch.cat([tensors[src + "mlp.fc.weight"], tensors[src + "mlp.gate.weight"]])
    return state


def load_converted(directory: Path, mapping=None, dtype: torch.dtype = torch.float32):
    """Load this rank's shards of a `dflash-trt convert` checkpoint: (target, drafter), bound together.

    Only `rank{mapping.tp_rank}.safetensors` of each model is read. Outside mpirun (`mapping` None) the
    checkpoint must have been converted for tp=1.
    """
    from dflash_trt.checkpoint.layout import drafter_entries, rank_specs, target_entries
    from dflash_trt.checkpoint.safetensors_io import dtype_named
    from dflash_trt.checkpoint.trtllm_config import read_converted
    from dflash_trt.checkpoint.validate import check_rank_files
    from dflash_trt.parallel.comm import Mapping
    from dflash_trt.parallel.tensor_parallel import build_drafter, build_target

    directory = Path(directory)
    mapping = mapping or Mapping()
    target_json, drafter_json, target_cfg, drafter_cfg = read_converted(directory)
    tp = int(target_json["mapping"]["tp_size"])
    if tp != mapping.tp_size:
        raise UserError(f"{directory / 'target' / 'config.json'}: converted for tp_size {tp} but running on "
                        f"{mapping.tp_size} rank(s); launch with `mpirun -n {tp} dflash-trt ...`")
    check_pair(target_cfg, drafter_cfg, str(directory / "drafter" / "config.json"))
    stored = dtype_named(str(target_json.get("dtype")))
    if stored is None:
        raise UserError(f"{directory / 'target' / 'config.json'}: unknown 'dtype' {target_json.get('dtype')!r}")
    check_rank_files(directory / "target", rank_specs(target_entries(target_cfg), tp, stored))
    check_rank_files(directory / "drafter", rank_specs(drafter_entries(drafter_cfg), tp, stored))
    rank_file = f"rank{mapping.tp_rank}.safetensors"

    def read(sub: str) -> dict[str, Tensor]:
        with safe_open(str(directory / sub / rank_file), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}

    t = read("target")
    target = build_target(target_cfg, mapping)
    target.load_state_dict({"embed.weight": t["transformer.vocab_embedding.weight"], "lm_head.weight": t["lm_head.weight"],
                            "norm.weight": t["transformer.ln_f.weight"],
                            **_converted_layers(t, target_cfg.num_layers)}, strict=True)
    d = read("drafter")
    drafter = build_drafter(drafter_cfg, mapping)
    drafter.load_state_dict({"fc.weight": d["dflash.fc.weight"], "hidden_norm.weight": d["dflash.hidden_norm.weight"],
                             "norm.weight": d["transformer.ln_f.weight"],
                             **_converted_layers(d, drafter_cfg.num_layers)}, strict=True)
    target, drafter = target.to(dtype).eval(), drafter.to(dtype).eval()
    drafter.bind(target.embed, target.lm_head)
    target.capture_layers = drafter_cfg.target_layer_ids
    return target, drafter
