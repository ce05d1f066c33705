"""The engine directory written by `dflash-trt build` and read by the onnxruntime and TensorRT runtimes.

```
ENGINE_DIR/config.json              pretrained_config (the target's TensorRT-LLM PretrainedConfig fields, the drafter's
                                    under pretrained_config.drafter), build_config, dflash, plugin (null when no
                                    TensorRT build loaded the plugin library), tokenizer, version
ENGINE_DIR/onnx/rank{r}/target.onnx, drafter.onnx (+ .onnx.data external weights, export.json)
ENGINE_DIR/target/rank{r}.engine, ENGINE_DIR/drafter/rank{r}.engine   only when datacenter TensorRT built them
ENGINE_DIR/tokenizer/               the target's tokenizer files
ENGINE_DIR/build_report.json        plan, export times, the TensorRT(-RTX) build of every graph
```
`build_config.profiles` lists the optimization profiles in TensorRT's profile-index order; each names the (min, opt,
max) shape of every graph input (all `past_key_values.*` of a graph share one entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dflash_trt.config import DrafterConfig, TargetConfig, read_json
from dflash_trt.errors import UserError

CONFIG = "config.json"
REPORT = "build_report.json"
ONNX_DIR = "onnx"
TOKENIZER_DIR = "tokenizer"
FORMAT = "dflash-trt-engine"
FORMAT_VERSION = 1
PAST = "past_key_values.*"


def onnx_path(rank: int, graph: str) -> str:
    return f"{ONNX_DIR}/rank{rank}/{graph}.onnx"


def engine_path(rank: int, graph: str) -> str:
    return f"{graph}/rank{rank}.engine"


@dataclass(frozen=True)
class EngineDir:
    """A built engine directory: its config.json, typed where the runtimes need it."""

    root: Path
    config: dict[str, Any]
    target: TargetConfig  # full (unsharded) configs, rebuilt from the HF configs recorded at build time
    drafter: DrafterConfig

    @property
    def tp_size(self) -> int:
        return int(self.config["pretrained_config"]["mapping"]["tp_size"])

    @property
    def build(self) -> dict[str, Any]:
        return self.config["build_config"]

    @property
    def block_size(self) -> int:
        return int(self.config["dflash"]["block_size"])

    @property
    def dtype(self) -> str:
        return str(self.config["pretrained_config"]["dtype"])

    @property
    def profiles(self) -> list[dict[str, Any]]:
        return self.build["profiles"]

    def profile_index(self, phase: str) -> int:
        """TensorRT's index of the profile serving `phase` ("prefill" or "step"; "step" serves both if alone)."""
        names = [p["name"] for p in self.profiles]
        return names.index(phase) if phase in names else names.index("step")

    def onnx(self, graph: str, rank: int = 0) -> Path:
        return self.root / onnx_path(rank, graph)

    def engine(self, graph: str, rank: int = 0) -> Path | None:
        """The datacenter TensorRT engine of `graph` for `rank`, or None when the build host had no TensorRT."""
        rel = engine_path(rank, graph)
        return self.root / rel if rel in self.config.get("engines", {}).get(graph, []) else None

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.config.get("tokenizer", TOKENIZER_DIR)


def read_engine_dir(root: Path) -> EngineDir:
    """Read ENGINE_DIR/config.json; one-line errors naming the file and field."""
    root = Path(root)
    path = root / CONFIG
    config = read_json(path)
    if config.get("format") != FORMAT:
        raise UserError(
            f"{path}: field 'format' is {config.get('format')!r}, not {FORMAT!r}; pass a directory "
            "written by `dflash-trt build`"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{path}: field 'format_version' is {config.get('format_version')!r}; this dflash-trt reads "
            f"{FORMAT_VERSION}: rebuild the engine directory"
        )
    for key in ("pretrained_config", "build_config", "dflash", "plugin"):
        if not isinstance(config.get(key), dict) and not (key == "plugin" and key in config):
            raise UserError(f"{path}: missing section '{key}'; rebuild the engine directory")
    pre = config["pretrained_config"]
    try:
        target = TargetConfig.from_hf(pre["dflash_trt"]["hf_config"], f"{path} (pretrained_config)")
        drafter = DrafterConfig.from_hf(
            pre["drafter"]["dflash_trt"]["hf_config"], f"{path} (pretrained_config.drafter)"
        )
    except (KeyError, TypeError):
        raise UserError(
            f"{path}: missing field 'pretrained_config.dflash_trt.hf_config' or "
            "'pretrained_config.drafter'; rebuild the engine directory"
        ) from None
    return EngineDir(root, config, target, drafter)
