"""Load the reference models from local Hugging Face directories (`config.json` + safetensors) or from a
`dflash-trt convert` checkpoint (this rank's shards)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from dflash_trt.checkpoint.layout import (
    drafter_entries,
    drafter_weights,
    hf_getter,
    internal_from_hf,
    internal_from_trtllm,
    rank_specs,
    target_entries,
    target_weights,
)
from dflash_trt.checkpoint.trtllm_config import read_converted
from dflash_trt.checkpoint.validate import check_rank_files
from dflash_trt.config import DRAFT_VOCAB_FILE, DrafterConfig, TargetConfig, check_pair, read_json
from dflash_trt.dtypes import dtype_named
from dflash_trt.errors import UserError
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.drafter2 import make_drafter
from dflash_trt.models.target import Transformer
from dflash_trt.parallel.comm import Mapping
from dflash_trt.parallel.tensor_parallel import build_drafter, build_target

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


def load_target(directory: Path, dtype: torch.dtype = torch.float32) -> Transformer:
    directory = Path(directory)
    cfg = TargetConfig.from_dir(directory)
    model = Transformer(cfg)
    model.load_state_dict(
        internal_from_hf(target_weights(cfg), read_tensors(directory).__getitem__, directory), strict=True
    )
    return model.to(dtype).eval()


def load_drafter(directory: Path, target: TargetConfig, dtype: torch.dtype = torch.float32) -> DFlashDrafter:
    """Load a z-lab drafter after checking that it fits the `target` config."""
    directory = Path(directory)
    cfg = DrafterConfig.from_dir(directory)
    check_pair(target, cfg, str(directory / "config.json"))
    model = make_drafter(cfg)
    tensors = read_tensors(directory)
    model.load_state_dict(internal_from_hf(drafter_weights(cfg), hf_getter(tensors), directory), strict=True)
    model.draft_vocab = read_draft_vocab(directory, target.vocab_size)
    return model.to(dtype).eval()


def read_draft_vocab(directory: Path, vocab_size: int) -> Tensor | None:
    """The drafter's reduced draft vocabulary, ascending: `token_ids` of DIR/draft_vocab.json (the target tokens
    its drafts may take, `python -m dflash_trt.train.draft_vocab`); None without the file (drafts take any token)."""
    path = Path(directory) / DRAFT_VOCAB_FILE
    if not path.is_file():
        return None
    ids = read_json(path).get("token_ids")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids)
        or len(set(ids)) != len(ids)
    ):
        raise UserError(
            f"{path}: field 'token_ids' must list distinct token ids in [0, {vocab_size}); "
            "remake it with `python -m dflash_trt.train.draft_vocab` or delete it to draft from the whole vocabulary"
        )
    return torch.tensor(sorted(ids))


def load_converted(
    directory: Path, mapping: Mapping | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Transformer, DFlashDrafter, TargetConfig]:
    """Load this rank's shards of a `dflash-trt convert` checkpoint: (target, drafter, the full target config).

    Only `rank{mapping.tp_rank}.safetensors` of each model is read. Outside mpirun (`mapping` None) the
    checkpoint must have been converted for tp=1.
    """
    directory = Path(directory)
    mapping = mapping or Mapping()
    target_json, drafter_json, target_cfg, drafter_cfg = read_converted(directory)
    tp = int(target_json["mapping"]["tp_size"])
    if tp != mapping.tp_size:
        raise UserError(
            f"{directory / 'target' / 'config.json'}: converted for tp_size {tp} but running on "
            f"{mapping.tp_size} rank(s); launch with `mpirun -n {tp} dflash-trt ...`"
        )
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

    target = build_target(target_cfg, mapping)
    target.load_state_dict(
        internal_from_trtllm(target_weights(target_cfg), read("target"), directory / "target" / rank_file), strict=True
    )
    drafter = build_drafter(drafter_cfg, mapping)
    drafter.load_state_dict(
        internal_from_trtllm(drafter_weights(drafter_cfg), read("drafter"), directory / "drafter" / rank_file),
        strict=True,
    )
    return target.to(dtype).eval(), drafter.to(dtype).eval(), target_cfg
