#!/usr/bin/env python3
"""Mutation check of the CTA harness: delete each `group.sync();` of the kernels' math in turn, rebuild
the threaded CTA harness under ThreadSanitizer against the mutant, and require it to fail. A mutant's
binary is rebuilt only when the mutant or a source it depends on changed.

A mutant survives when the harness still passes without that barrier: either the barrier is not
needed (then delete it from the source) or the harness does not exercise what it orders (then it
needs a case that does). Run by ctest in a DFLASH_TRT_SANITIZE=ON build:

    sync_mutants.py --cxx g++ --source tests/cta/ctaHarness.cpp --src src -I tests/harness -I <hostCuda>
                    --out <build>/mutants
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HEADERS = ("dflashBlockAttention/dflashBlockAttentionMath.h", "dflashContextKVAppend/dflashContextKVAppendMath.h")
SYNC = "group.sync();"
FLAGS = ["-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread"]


def mutants(src: Path) -> list[tuple[str, int, str]]:
    """(header, line number, mutated text) for every sync() line of the math headers."""
    out = []
    for header in HEADERS:
        lines = (src / header).read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip() == SYNC:
                mutated = lines[:i] + [line.replace(SYNC, "/* sync() deleted by sync_mutants.py */")] + lines[i + 1 :]
                out.append((header, i + 1, "".join(mutated)))
    return out


def sources_digest(args: argparse.Namespace) -> str:
    """Everything a mutant's build depends on besides the mutated header: compiler, flags, the sources."""
    digest = hashlib.sha256(" ".join([args.cxx, *FLAGS]).encode())
    files = sorted(args.src.rglob("*.h")) + [args.source] + sorted(p for i in args.include for p in Path(i).glob("*.h"))
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def check(args: argparse.Namespace, base: str, index: int, header: str, line: int, text: str) -> tuple[str, bool, str]:
    root = args.out / f"mutant{index}"
    (root / header).parent.mkdir(parents=True, exist_ok=True)
    exe = root / "cta_harness"
    stamp = root / "stamp"
    key = hashlib.sha256((base + header + text).encode()).hexdigest()
    where = f"{header}:{line}"
    if not (exe.is_file() and stamp.is_file() and stamp.read_text() == key):  # rebuild only what changed
        (root / header).write_text(text)
        includes = [f"-I{root}", f"-I{args.src}"] + [f"-I{i}" for i in args.include]  # the mutant shadows the original
        build = subprocess.run(
            [args.cxx, *FLAGS, *includes, str(args.source), "-o", str(exe)], capture_output=True, text=True
        )
        if build.returncode != 0:
            return where, False, "does not compile:\n" + build.stderr[-2000:]
        stamp.write_text(key)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:exitcode=66")
    run = subprocess.run([str(exe), "threaded"], capture_output=True, text=True, env=env, timeout=600)
    race = "WARNING: ThreadSanitizer: data race" in run.stderr
    detail = "data race reported" if race else ("wrong results" if run.returncode else "passed")
    return where, run.returncode != 0, detail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cxx", required=True)
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("-I", "--include", action="append", default=[])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    found = mutants(args.src)
    if not found:
        print(f"no '{SYNC}' lines found in {HEADERS}")
        return 1
    base = sources_digest(args)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda item: check(args, base, item[0], *item[1]), enumerate(found)))
    caught = 0
    for where, killed, detail in results:
        print(f"{'CAUGHT' if killed else 'SURVIVED'} {where}: {detail}")
        caught += killed
    print(f"SUMMARY caught={caught} mutants={len(found)}")
    return 0 if caught == len(found) else 1


if __name__ == "__main__":
    sys.exit(main())
