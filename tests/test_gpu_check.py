"""bench/gpu_check.py, the one-command GPU check, runs end to end with --quick on any machine, so
it works the day a GPU is lent (docs/training.md#checking-a-gpu). Its pytest section is left out here
(--no-tests): a benchmark never nests the test suite inside the suite, and tests/test_gpu.py runs in
the suite itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from testkit.training import REPO


@pytest.mark.slow  # every section of the GPU check at tiny sizes: ~30 s on a CPU
def test_gpu_check_quick_runs_every_section_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--quick", "--no-tests", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "tests" not in result and "tests (pytest -m gpu)" not in proc.stdout  # no pytest inside the suite
    assert result["meta"]["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    styles = {(r["style"], r["attention"], r["compiled"]) for r in result["rows"]}
    assert {("project", "fused", False), ("reference", "explicit", False), ("project", "explicit", False)} <= styles
    assert all(r["pairs_per_s"] > 0 and r["gflop_per_pair"] > 0 for r in result["rows"])
    reference = next(r for r in result["rows"] if r["style"] == "reference")
    assert reference["vs_reference"] == 1.0 and reference["gflop_per_pair"] > result["rows"][0]["gflop_per_pair"]
    assert result["propagation"]["propagation_s_per_frame"] > 0 and result["propagation"]["frames"] == 34
    (loader,) = result["loader"]
    assert loader["alone_pairs_per_s"] > 0 and 0 <= loader["data_wait_share"] <= 1
    assert result["skipped"] == []
    assert "targets: S/16 compiled MFU >= 0.35" in proc.stdout and f"wrote {out}" in proc.stdout
