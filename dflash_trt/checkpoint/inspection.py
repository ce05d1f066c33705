"""`inspect`: verify a converted checkpoint (checksums, structure, pairing) and summarize it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dflash_trt.checkpoint.convert import MANIFEST
from dflash_trt.checkpoint.layout import drafter_entries, rank_specs, target_entries
from dflash_trt.checkpoint.plan import human_bytes
from dflash_trt.checkpoint.safetensors_io import sha256_file
from dflash_trt.checkpoint.trtllm_config import read_converted
from dflash_trt.checkpoint.validate import check_rank_files
from dflash_trt.config import read_json
from dflash_trt.dtypes import dtype_named
from dflash_trt.errors import UserError

FIX = "the checkpoint is corrupt or was modified; re-run convert"


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Every file listed in the manifest has its recorded size and sha256; no unlisted file sits beside them."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"{directory / MANIFEST}: field 'files' is missing or empty; re-run convert")
    for rel, info in files.items():
        path = directory / rel
        if not path.is_file():
            raise UserError(f"{path}: listed in {MANIFEST} but missing; {FIX}")
        if path.stat().st_size != info["bytes"]:
            raise UserError(f"{path}: {path.stat().st_size} bytes, {MANIFEST} records {info['bytes']}; {FIX}")
        if sha256_file(path) != info["sha256"]:
            raise UserError(f"{path}: sha256 does not match {MANIFEST}; {FIX}")
    for sub in ("target", "drafter"):
        for path in sorted((directory / sub).iterdir()):
            if f"{sub}/{path.name}" not in files:
                raise UserError(f"{path}: not listed in {MANIFEST}; remove it or re-run convert")


def inspect_checkpoint(directory: Path) -> str:
    """Verify everything about a converted checkpoint, then return a human-readable summary."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST)
    verify_files(directory, manifest)
    target_json, drafter_json, target, drafter = read_converted(directory)
    tp = int(target_json["mapping"]["tp_size"])
    dtype = dtype_named(str(target_json["dtype"]))
    if dtype is None:
        raise UserError(f"{directory / 'target' / 'config.json'}: field 'dtype' is '{target_json['dtype']}'; {FIX}")
    for sub, entries in (("target", target_entries(target)), ("drafter", drafter_entries(drafter))):
        check_rank_files(directory / sub, rank_specs(entries, tp, dtype))
    dflash = drafter_json["dflash"]
    embedding = target_json["dflash_trt"]["embedding"]
    if dflash["target"]["embedding"] != embedding:
        raise UserError(
            f"{directory / 'drafter' / 'config.json'}: 'dflash.target.embedding' does not match the target's "
            "embedding fingerprint; this drafter was converted with a different target"
        )

    def sizes(sub: str) -> str:
        return ", ".join(
            f"rank{r} {human_bytes((directory / sub / f'rank{r}.safetensors').stat().st_size)}" for r in range(tp)
        )

    return "\n".join(
        [
            f"{directory}: dflash-trt checkpoint format {manifest['format_version']} "
            f"(dflash-trt {manifest['tool']['version']}, {manifest['created_utc']})",
            f"  mapping: world {tp}, tp {tp}, pp 1; dtype {dtype.trtllm}",
            f"  target:  {target_json['architecture']}, {target.num_layers} layers, hidden {target.hidden_size}, "
            f"heads {target.num_heads}/{target.num_kv_heads} x {target.head_dim}, vocab {target.vocab_size} "
            f"(padded {target_json['dflash_trt']['vocab_size_padded']}), tied {target.tie_word_embeddings}",
            f"           {sizes('target')}",
            f"  drafter: {drafter_json['architecture']}, {drafter.num_layers} layers, "
            f"block_size {dflash['block_size']}, mask_token_id {dflash['mask_token_id']}, "
            f"target_layer_ids {dflash['target_layer_ids']}",
            f"           {sizes('drafter')}",
            f"  pair:    drafter built for {dflash['target']['architecture']} with embedding sha256 "
            f"{embedding['sha256'][:16]}... (matches the target)",
            f"  verified sha256 of {len(manifest['files'])} files; tensor names, shapes and dtypes match the configs",
        ]
    )
