"""Benchmark reports carry their command, machine, load when the run started and CPU steal during the run."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dflash_trt.bench import reporting
from dflash_trt.bench.reporting import RunStart, write_report

# /proc/stat `cpu` line: user nice system idle iowait irq softirq steal
AT_START = (1000, 0, 200, 5000, 0, 0, 0, 100)
AT_REPORT = (1600, 0, 300, 5250, 0, 0, 0, 150)  # +1000 jiffies in all, +50 of them stolen


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="CPU steal is read from Linux /proc/stat")
def test_report_records_machine_load_and_steal(tmp_path):
    start = RunStart.now()
    paths = write_report(start, "demo", {"rows": [1, 2]}, "# Demo\n\nbody", out_dir=tmp_path)
    assert [p.name for p in paths] == ["demo.json", "demo.md"]
    data = json.loads(paths[0].read_text())
    assert data["rows"] == [1, 2] and data["command"].startswith(Path(sys.argv[0]).name)
    m = data["machine"]
    assert m["cores"] >= 1 and m["load_average_1m_at_start"] == round(start.load_average_1m, 2) >= 0
    assert 0 <= m["cpu_steal_percent"] <= 100
    header = paths[1].read_text().splitlines()
    assert f"load average {m['load_average_1m_at_start']} at start (other processes kept " in header[2]
    assert m["others_busy_cores_at_start"] >= 0
    assert f"{m['cpu_steal_percent']}% of CPU time stolen by the hypervisor" in header[2]
    assert header[-1] == "body"


def test_load_and_steal_are_measured_from_the_start_snapshot(tmp_path, monkeypatch):
    """Load is the one read when the run started (not when the report is written); steal is the stolen share
    of the CPU time that passed between the snapshot and the report."""
    monkeypatch.setattr(os, "getloadavg", lambda: (3.25, 0.0, 0.0))
    monkeypatch.setattr(reporting, "_cpu_jiffies", lambda: AT_START)
    start = RunStart.now()
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    monkeypatch.setattr(reporting, "_cpu_jiffies", lambda: AT_REPORT)
    paths = write_report(start, "demo", {}, "body", out_dir=tmp_path)
    m = json.loads(paths[0].read_text())["machine"]
    assert m["load_average_1m_at_start"] == 3.25
    assert m["cpu_steal_percent"] == 5.0
    assert (
        "load average 3.25 at start (other processes kept 0.0 cores busy), 5.0% of CPU time stolen by the "
        "hypervisor during the run" in (paths[1].read_text().splitlines()[2])
    )


def test_steal_is_left_out_when_cpu_counters_are_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(reporting, "_cpu_jiffies", lambda: ())
    paths = write_report(RunStart.now(), "demo", {}, "body", out_dir=tmp_path)
    assert json.loads(paths[0].read_text())["machine"]["cpu_steal_percent"] is None
    line = paths[1].read_text().splitlines()[2]
    assert line.endswith(" cores busy)") and "stolen" not in line


def test_importing_reporting_reads_nothing(monkeypatch):
    """No work at import time: neither /proc/stat nor the load average is read until a run starts."""
    reads = []
    monkeypatch.setattr(os, "getloadavg", lambda: reads.append("loadavg") or (0.0, 0.0, 0.0))
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        reads.append(str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    importlib.reload(reporting)
    assert reads == []
    reporting.RunStart.now()
    assert "loadavg" in reads and (not Path("/proc/stat").exists() or "/proc/stat" in reads)


def test_others_busy_cores_leaves_out_this_process(monkeypatch):
    """Busy time over the window minus this process's own, in cores: 2 cores x 100 ticks pass, 150 ticks busy,
    100 of them this process's -> other processes kept 0.5 of a core busy."""
    stat = iter([AT_START, (1120, 0, 230, 5050, 0, 0, 0, 100)])
    own = iter([10, 110])
    monkeypatch.setattr(reporting, "_cpu_jiffies", lambda: next(stat))
    monkeypatch.setattr(reporting, "_own_cpu_ticks", lambda: next(own))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert reporting.others_busy_cores(0.0) == pytest.approx(0.5)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads Linux /proc")
def test_own_cpu_time_counts_this_process_and_a_spinning_process_counts_as_other():
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    before, end = reporting._own_cpu_ticks(), time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of this process's CPU time
        pass
    assert reporting._own_cpu_ticks() - before >= 0.2 * ticks_per_s
    spin = "import time\nend = time.time() + 5\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        assert reporting.others_busy_cores(1.0) >= 0.4  # a whole core while it runs, less if CPUs are shared
    finally:
        spinner.kill()
        spinner.wait()
