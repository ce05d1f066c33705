"""Test-side wrapper around `dflash-trt convert` that stops mid-conversion, for test_interrupt.py.

    python paused_convert.py PIECES convert --target ... --output ...

Patches the rank writer in this process only: after PIECES tensor pieces are written it prints
"paused after PIECES pieces" on stderr and sleeps until a signal arrives, so a test can signal the
converter at a known point (temp directory half written) without any hook in the product.
"""

from __future__ import annotations

import sys
import time

from dflash_trt.checkpoint.safetensors_io import RankWriter
from dflash_trt.cli import main

MARKER = "paused after"


def pause_after(pieces: int) -> None:
    write = RankWriter.write
    written = 0

    def write_then_pause(self: RankWriter, name: str, tensor) -> None:
        nonlocal written
        write(self, name, tensor)
        written += 1
        if written == pieces:
            print(f"{MARKER} {pieces} pieces", file=sys.stderr, flush=True)
            while True:
                time.sleep(60)

    RankWriter.write = write_then_pause


if __name__ == "__main__":
    pause_after(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
