"""Timing of calls in interleaved rounds: every call once per round, in order, so a slow or fast stretch of the
machine touches all of them alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed_rounds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """ms of each call over `repeats` rounds that run every call once, in order, after two warm-up rounds."""
    times = {key: [] for key in calls}
    for i in range(repeats + 2):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            if i >= 2:
                times[key].append((time.perf_counter() - start) * 1e3)
    return times
