"""Benchmark reports: machine description, and JSON + Markdown (+ PNG) files under results/."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "results"


def _cpu_jiffies() -> tuple[int, ...]:
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...); () if absent."""
    try:
        return tuple(int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:])
    except (OSError, ValueError):
        return ()


def _own_cpu_ticks() -> int:
    """CPU time (clock ticks, all threads) this process has used: utime + stime of /proc/self/stat."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def others_busy_cores(seconds: float = 0.3) -> float:
    """How many cores other processes keep busy, sampled over `seconds`: busy CPU time from /proc/stat minus
    this process's own. Unlike the load average it leaves out this process's threads and reflects now, not the
    last minute. Falls back to the 1-minute load average where /proc is absent."""
    try:
        before, own_before = _cpu_jiffies(), _own_cpu_ticks()
        time.sleep(seconds)
        after, own_after = _cpu_jiffies(), _own_cpu_ticks()
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0]
    if len(before) < 5 or len(after) < 5:
        return os.getloadavg()[0]
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])
    busy = total - delta[3] - delta[4]  # all but idle and iowait
    cores = os.cpu_count() or 1
    return max(0.0, (busy - (own_after - own_before)) * cores / max(1, total))


@dataclass(frozen=True)
class RunStart:
    """What the machine was doing when a benchmark command started: its 1-minute load average, how many
    cores other processes kept busy right then, and CPU counters. A benchmark takes it first thing
    (`RunStart.now()`) and hands it to `write_report`, which reports the load at start and the CPU steal
    between then and the report."""

    load_average_1m: float
    cpu_jiffies: tuple[int, ...]
    others_busy_cores: float

    @classmethod
    def now(cls) -> RunStart:
        return cls(os.getloadavg()[0], _cpu_jiffies(), others_busy_cores())

    def cpu_steal_percent(self) -> float | None:
        """Share of CPU time the hypervisor gave to other guests since this snapshot (None if unknown)."""
        now = _cpu_jiffies()
        if len(now) < 8 or len(self.cpu_jiffies) < 8:
            return None
        delta = [b - a for a, b in zip(self.cpu_jiffies, now)]
        return round(100 * delta[7] / max(1, sum(delta[:8])), 1)


def machine(start: RunStart) -> dict[str, Any]:
    """CPU model, cores, memory, torch build and threads, load when the run started and CPU steal since:
    what a timing figure depends on."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except OSError:
        mem_kb = 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": "none",
        "load_average_1m_at_start": round(start.load_average_1m, 2),
        "others_busy_cores_at_start": round(start.others_busy_cores, 2),
        "cpu_steal_percent": start.cpu_steal_percent(),
    }


def write_report(
    start: RunStart, name: str, data: dict[str, Any], markdown: str, figure=None, out_dir: Path = RESULTS
) -> list[Path]:
    """Write results/<name>.json, .md (with command and machine, load at `start` and CPU steal since) and,
    given a matplotlib figure, .png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(start),
    }
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps({**meta, **data}, indent=2) + "\n")
    m = meta["machine"]
    header = (
        f"Command: `{meta['command']}`  \nDate: {meta['date']}  \n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, no GPU; "
        f"torch {m['torch']} ({m['torch_threads']} threads); "
        f"load average {m['load_average_1m_at_start']} at start "
        f"(other processes kept {m['others_busy_cores_at_start']} cores busy)"
        + (
            f", {m['cpu_steal_percent']}% of CPU time stolen by the hypervisor during the run"
            if m["cpu_steal_percent"] is not None
            else ""
        )
        + "\n\n"
    )
    if figure is not None:
        paths.append(out_dir / f"{name}.png")
        figure.savefig(paths[2], dpi=120, bbox_inches="tight")
        header += f"![{name}]({name}.png)\n\n"
    paths[1].write_text(header + markdown.rstrip() + "\n")
    return paths
