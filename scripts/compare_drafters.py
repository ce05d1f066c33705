"""Paired comparison of two drafters' held-out greedy tau, prompt by prompt, from two
`python -m dflash_trt.train.evaluate --json` files measured on the same prompts and block size: mean
difference with a bootstrap 95% interval, wins / losses / ties. Writes Markdown to stdout.

    .venv/bin/python scripts/compare_drafters.py A.json B.json [--block 8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path


def per_prompt(path: Path, block: str) -> tuple[str, list[float]]:
    doc = json.loads(path.read_text())
    return doc["drafter"], doc["results"][block]["tau_per_prompt"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--block", default="8")
    p.add_argument("--resamples", type=int, default=10000)
    args = p.parse_args()
    (name_a, a), (name_b, b) = per_prompt(args.a, args.block), per_prompt(args.b, args.block)
    if len(a) != len(b):
        print(
            f"error: {args.a} has {len(a)} prompts, {args.b} {len(b)}; evaluate both on one prompts file",
            file=sys.stderr,
        )
        return 2
    diff = [y - x for x, y in zip(a, b)]
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(diff, k=len(diff))) for _ in range(args.resamples))
    low, high = means[int(0.025 * len(means))], means[int(0.975 * len(means))]
    print(f"| drafter | prompts | tau (B={args.block}) |\n|---|---|---|")
    for label, name, taus in (("A", name_a, a), ("B", name_b, b)):
        print(f"| {label}: `{name}` | {len(taus)} | {statistics.mean(taus):.3f} |")
    print(
        f"\nB - A: {statistics.mean(diff):+.3f} tau (bootstrap 95% interval {low:+.3f} .. {high:+.3f}); "
        f"B ahead on {sum(d > 0 for d in diff)} prompts, behind on {sum(d < 0 for d in diff)}, "
        f"even on {sum(d == 0 for d in diff)}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
