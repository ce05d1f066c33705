"""Benchmark reports carry their command, machine, load at start and CPU steal during the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dflash_trt.bench.reporting import write_report


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="CPU steal is read from Linux /proc/stat")
def test_report_records_machine_load_and_steal(tmp_path):
    paths = write_report("demo", {"rows": [1, 2]}, "# Demo\n\nbody", out_dir=tmp_path)
    assert [p.name for p in paths] == ["demo.json", "demo.md"]
    data = json.loads(paths[0].read_text())
    assert data["rows"] == [1, 2] and data["command"].startswith(Path(sys.argv[0]).name)
    m = data["machine"]
    assert m["cores"] >= 1 and m["load_average_1m_at_start"] >= 0 and 0 <= m["cpu_steal_percent"] <= 100
    header = paths[1].read_text().splitlines()
    assert f"{m['cpu_steal_percent']}% of CPU time stolen by the hypervisor" in header[2]
    assert header[-1] == "body"
