"""Loss-curve PNG and a summary JSON from a training run's train_log.json (and optional tau results).

python -m dflash_trt.train.report --log OUT/train_log.json [--tau tau.json] --out results/train_x
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dflash_trt.config import read_json
from dflash_trt.errors import UserError


def smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = log["train"], log["val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in train]
    ax1.plot(steps, [r["loss"] for r in train], alpha=0.25, color="C0", label="train (per step)")
    ax1.plot(steps, smooth([r["loss"] for r in train], 20), color="C0", label="train (20-step mean)")
    ax1.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", color="C1", label="validation")
    ax1.set_xlabel("step")
    ax1.set_ylabel("decay-weighted cross-entropy")
    ax1.legend()
    for k in range(min(3, len(val[0]["acc"]) if val else 0)):
        ax2.plot([r["step"] for r in val], [r["acc"][k] for r in val], "o-", label=f"val acc @ position {k + 1}")
    ax2b = ax2.twinx()
    ax2b.plot([r["step"] for r in val], [r["tau_est"] for r in val], "s--", color="k", label="val tau estimate")
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2b.set_ylabel("1 + sum_k prod_j<=k acc_j")
    ax2.legend(loc="upper left")
    ax2b.legend(loc="lower right")
    fig.suptitle(f"DFlash drafter training ({log['train_tokens']} train tokens, {log['elapsed_s'] / 60:.0f} min)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dflash_trt.train.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--tau", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        log = read_json(args.log)
        tau = read_json(args.tau) if args.tau else None
        if not log.get("val"):
            raise UserError(f"{args.log}: no validation evaluation yet; train for at least 'eval_every' steps")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    plot(log, args.out / "loss_curve.png")
    best = max(log["val"], key=lambda r: r["tau_est"])
    summary = {
        "steps": log["step"],
        "train_minutes": round(log["elapsed_s"] / 60, 1),
        "train_tokens": log["train_tokens"],
        "train_sequences": log["train_sequences"],
        "val_sequences": log["val_sequences"],
        "best_val": best,
        "last_val": log["val"][-1],
        "recipe": log["recipe"],
        "drafter": log["drafter"],
        "tau": tau,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "train_log.json").write_text(json.dumps(log) + "\n")
    print(args.out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
