"""The training loop: frozen target (embedding + LM head only), cached features, AdamW, checkpoints, resume.

Output directory:
  train_state.pt     drafter + optimiser state, step, log (what --resume continues from)
  checkpoint-<step>/ z-lab checkpoints of the last few saves;  best/ the one with the best validation tau
  train_log.json     the recipe, per-step training metrics and validation evaluations
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dflash_trt.config import DrafterConfig, TargetConfig, default_target_layer_ids
from dflash_trt.errors import UserError
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.drafter2 import make_drafter
from dflash_trt.models.target import Transformer
from dflash_trt.runtime.loading import load_drafter, load_target
from dflash_trt.train.blocks import decay_weights
from dflash_trt.train.dataset import load_sequences, make_batch, step_batch
from dflash_trt.train.export import save_zlab
from dflash_trt.train.forward import (
    block_hidden,
    drafter_rope,
    expected_tau,
    frozen,
    init_dflash2,
    loss_and_accuracy,
    mask_logits,
    selector_loss_and_accuracy,
)
from dflash_trt.train.recipe import Recipe, resolve_target
from dflash_trt.train.shards import Sequence

STATE = "train_state.pt"
EMBEDDED_MASK_TOKEN = 16  # SmolLM2 `<empty_output>`: a notebook marker that chat and code never produce


def drafter_config(recipe: Recipe, target: TargetConfig, embedded: bool) -> DrafterConfig:
    mask = recipe.mask_token_id
    if mask < 0:
        if not embedded:
            raise UserError(
                "recipe field 'mask_token_id' is required for a non-embedded target; "
                "pick a token id the target never produces (a reserved or unused special token)"
            )
        mask = EMBEDDED_MASK_TOKEN
    if not 0 <= mask < target.vocab_size:
        raise UserError(f"recipe field 'mask_token_id' is {mask}; it must be in 0..{target.vocab_size - 1}")
    layer_ids = tuple(recipe.target_layer_ids) or tuple(default_target_layer_ids(target.num_layers, 5))
    if any(not 0 <= i < target.num_layers for i in layer_ids):
        raise UserError(
            f"recipe field 'target_layer_ids' is {list(layer_ids)}; the target has {target.num_layers} layers"
        )
    v2 = {}
    if recipe.architecture == "dflash2":
        if target.hidden_size % recipe.conv_group_size:
            raise UserError(
                f"recipe field 'conv_group_size' is {recipe.conv_group_size}; it must divide the target's "
                f"hidden_size {target.hidden_size}"
            )
        if recipe.selector_top_k > target.vocab_size:
            raise UserError(
                f"recipe field 'selector_top_k' is {recipe.selector_top_k}; at most the target's vocab "
                f"{target.vocab_size}"
            )
        v2 = dict(
            arch="dflash2",
            conv_kernel_size=recipe.conv_kernel_size,
            conv_group_size=recipe.conv_group_size,
            selector_rank=recipe.selector_rank,
            selector_top_k=recipe.selector_top_k,
        )
    return DrafterConfig(
        hidden_size=target.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads or target.num_heads,
        num_kv_heads=recipe.num_kv_heads or target.num_kv_heads,
        head_dim=recipe.head_dim or target.head_dim,
        block_size=recipe.block_size,
        mask_token_id=mask,
        target_layer_ids=layer_ids,
        num_target_layers=target.num_layers,
        rms_norm_eps=target.rms_norm_eps,
        rope_theta=target.rope_theta,
        rope_scaling=target.rope_scaling,
        max_position_embeddings=target.max_position_embeddings,
        vocab_size=target.vocab_size,
        **v2,
    )


def start_from(drafter: DFlashDrafter, directory: Path, target: TargetConfig) -> None:
    """Load the weights of the z-lab drafter in `directory` into `drafter` (recipe field 'init_from'). Every
    weight of the checkpoint must fit; a DFlash2 drafter may keep its own convs and selector (a v1 start)."""
    source = load_drafter(directory, target)
    shapes = {k: v.shape for k, v in drafter.state_dict().items()}
    for key, value in source.state_dict().items():
        if shapes.get(key) != value.shape:
            raise UserError(
                f"recipe field 'init_from': {directory}'s {key} is {list(value.shape)}, the recipe's drafter has "
                f"{list(shapes[key]) if key in shapes else 'none'}; match num_layers/intermediate_size/heads"
            )
    missing, _ = drafter.load_state_dict(source.state_dict(), strict=False)
    if missing and not drafter.cfg.is_dflash2:
        raise UserError(f"recipe field 'init_from': {directory} has no {missing[0]}")


def init_drafter(cfg: DrafterConfig, target: Transformer, from_layers: list[int]) -> DFlashDrafter:
    """A fresh drafter for the target; optionally warm-started from target decoder layers.

    A warm start copies the layer's norms, fused qkv/o projections and MLP (shapes must match); the
    Qwen3-style q_norm/k_norm start at ones and the final norm is the target's.
    """
    drafter = make_drafter(cfg)
    if cfg.is_dflash2:
        init_dflash2(drafter)
    if from_layers:
        with torch.no_grad():
            for layer, src in zip(drafter.layers, from_layers):
                if not 0 <= src < len(target.layers):
                    raise UserError(
                        f"recipe field 'init_from_target_layers' has {src}; the target has {len(target.layers)} layers"
                    )
                t = target.layers[src]
                for name in ("attn_norm", "mlp_norm", "attn.wqkv", "attn.wo", "mlp.w13", "mlp.w2"):
                    dst, s = layer.get_submodule(name), t.get_submodule(name)
                    if dst.weight.shape != s.weight.shape:
                        raise UserError(
                            f"recipe field 'init_from_target_layers': draft {name} is "
                            f"{list(dst.weight.shape)}, target's is {list(s.weight.shape)}; match "
                            "intermediate_size/heads to the target or drop the warm start"
                        )
                    dst.load_state_dict(s.state_dict())
            drafter.norm.weight.copy_(target.norm.weight)
    return drafter


class Trainer:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        torch.set_num_threads(recipe.threads)
        target = load_target(resolve_target(recipe.target))
        frozen(target)
        self.cfg = drafter_config(recipe, target.cfg, recipe.target == "embedded")
        torch.manual_seed(recipe.seed)
        self.drafter = init_drafter(self.cfg, target, recipe.init_from_target_layers)
        if recipe.init_from:
            start_from(self.drafter, Path(recipe.init_from).expanduser(), target.cfg)
        self.embed, self.lm_head = target.embed, target.lm_head  # frozen, shared with the target
        min_len = recipe.block_size
        self.train_seqs = load_sequences(
            recipe.data, "train", self.cfg.target_layer_ids, min_len, recipe.generated_repeat
        )
        unique = {id(s): s for s in self.train_seqs}.values()
        self.data_tokens = {kind: sum(len(s.tokens) for s in unique if s.kind == kind) for kind in ("gen", "tf")}
        self.val_seqs = load_sequences(recipe.data, "val", self.cfg.target_layer_ids, min_len)[: recipe.eval_sequences]
        decay = [p for n, p in self.drafter.named_parameters() if p.ndim >= 2]
        other = [p for n, p in self.drafter.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": other, "weight_decay": 0.0}],
            lr=recipe.lr,
            betas=(0.9, 0.95),
        )
        self.weights = decay_weights(recipe.block_size, recipe.decay_gamma)
        self.rope = drafter_rope(self.drafter)
        self.step, self.elapsed, self.log = 0, 0.0, {"train": [], "val": []}
        self.best_tau = 0.0

    # -- state ---------------------------------------------------------------------------------------
    def save_state(self) -> None:
        out = self.recipe.output
        state = {
            "drafter": self.drafter.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "log": self.log,
            "best_tau": self.best_tau,
            "recipe": self.recipe.to_dict(),
        }
        tmp = out / f".{STATE}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, out / STATE)

    def load_state(self) -> None:
        path = self.recipe.output / STATE
        state = torch.load(path, weights_only=False)
        self.drafter.load_state_dict(state["drafter"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.elapsed, self.log, self.best_tau = (
            state["step"],
            state["elapsed"],
            state["log"],
            state["best_tau"],
        )

    def write_log(self) -> None:
        doc = {
            "recipe": self.recipe.to_dict(),
            "drafter": self.cfg.to_hf(),
            "step": self.step,
            "elapsed_s": round(self.elapsed, 1),
            "train_tokens": sum(self.data_tokens.values()),
            "train_tokens_by_source": self.data_tokens,
            "train_sequences": len(self.train_seqs),
            "val_sequences": len(self.val_seqs),
            **self.log,
        }
        (self.recipe.output / "train_log.json").write_text(json.dumps(doc, indent=1) + "\n")

    def checkpoint(self, val_tau: float | None) -> None:
        out = self.recipe.output
        save_zlab(self.drafter, out / f"checkpoint-{self.step}")
        old = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for path in old[: -self.recipe.keep_checkpoints]:
            shutil.rmtree(path)
        if val_tau is not None and val_tau > self.best_tau:
            self.best_tau = val_tau
            save_zlab(self.drafter, out / "best")
        self.save_state()
        self.write_log()

    # -- steps ---------------------------------------------------------------------------------------
    def forward(self, seqs: list[Sequence], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.recipe
        batch = make_batch(seqs, r.block_size, r.anchors_per_seq, r.max_seq_len, self.cfg.mask_token_id, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.autocast_bf16):
            hidden = block_hidden(self.drafter, self.embed, batch, self.rope)
            logits = mask_logits(self.lm_head, hidden, batch.valid)
            if self.cfg.is_dflash2:
                return selector_loss_and_accuracy(self.drafter, hidden, logits, batch, self.weights)
        return loss_and_accuracy(logits, batch.labels[batch.valid], self.weights)

    def train_step(self) -> tuple[float, list[float]]:
        r = self.recipe
        for group in self.opt.param_groups:
            group["lr"] = r.lr_at(self.step)
        generator = torch.Generator().manual_seed(r.seed * 1_000_003 + self.step)
        loss, acc = self.forward(step_batch(self.train_seqs, self.step, r.batch_size, r.seed), generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.drafter.parameters(), r.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss.detach()), acc.tolist()

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss and per-position accuracy with fixed anchors (same every evaluation)."""
        generator = torch.Generator().manual_seed(12345)
        losses, accs = [], []
        for lo in range(0, len(self.val_seqs), self.recipe.batch_size):
            loss, acc = self.forward(self.val_seqs[lo : lo + self.recipe.batch_size], generator)
            losses.append(float(loss))
            accs.append(acc)
        acc = torch.stack(accs).mean(0).tolist()
        return {
            "step": self.step,
            "loss": sum(losses) / len(losses),
            "acc": [round(a, 4) for a in acc],
            "tau_est": round(expected_tau(acc), 3),
            "elapsed_s": round(self.elapsed, 1),
        }

    def run(self, time_limit_s: float = 0.0, stop_at: int = 0) -> Path:
        """Train to `recipe.steps`, or until `time_limit_s` of this run or step `stop_at` (then checkpoint,
        so that --resume continues). Returns the best checkpoint directory."""
        r = self.recipe
        started = time.monotonic()
        end = min(r.steps, stop_at) if stop_at else r.steps
        if not self.log["val"]:  # where the run starts from (the warm start's quality)
            self.log["val"].append(self.evaluate())
        bar = tqdm(total=r.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        ema = None
        while self.step < end:
            t0 = time.monotonic()
            loss, acc = self.train_step()
            self.elapsed += time.monotonic() - t0
            ema = acc if ema is None else [0.9 * e + 0.1 * a for e, a in zip(ema, acc)]
            self.log["train"].append(
                {
                    "step": self.step,
                    "loss": round(loss, 4),
                    "lr": r.lr_at(self.step - 1),
                    "acc": [round(a, 4) for a in acc],
                }
            )
            bar.set_postfix(loss=f"{loss:.3f}", acc1=f"{ema[0]:.2f}", tau_est=f"{expected_tau(ema):.2f}")
            bar.update()
            stopping = self.step == end or (time_limit_s and time.monotonic() - started > time_limit_s)
            val_tau = None
            if self.step % r.eval_every == 0 or self.step == r.steps or stopping:
                val = self.evaluate()
                self.log["val"].append(val)
                val_tau = val["tau_est"]
                bar.write(f"step {self.step}: val loss {val['loss']:.3f} acc {val['acc']} tau_est {val_tau:.2f}")
            if self.step % r.checkpoint_every == 0 or self.step == r.steps or stopping or val_tau is not None:
                self.checkpoint(val_tau)
            if stopping and self.step < r.steps:
                bar.write(f"stopped at step {self.step}; --resume continues")
                break
        bar.close()
        return r.output / "best"


def train(recipe: Recipe, resume: bool = False, time_limit_s: float = 0.0, stop_at: int = 0) -> Path:
    """Train per `recipe` into `recipe.output`; `resume` continues from its train_state.pt."""
    out = recipe.output
    if resume and not (out / STATE).is_file():
        raise UserError(f"{out / STATE}: nothing to resume; run without --resume to start")
    if not resume and (out / STATE).exists():
        raise UserError(f"{out}: already holds a training run; pass --resume to continue it or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(recipe)
    if resume:
        trainer.load_state()
    return trainer.run(time_limit_s, stop_at)
