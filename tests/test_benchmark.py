"""Smoke test of the throughput benchmark: --quick runs and writes its JSON and PNG (no timing
is checked: benchmarks are never timed tests)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _throughput_module():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    tp = _throughput_module()
    # Per-repeat ratios 1, 2, 3: median 2 with quartiles 1.5 and 2.5; the ratio of the two
    # medians (3 / 1) would be 3.
    ratio, quartiles = tp.paired_ratio([1.0, 10.0, 3.0], [1.0, 5.0, 1.0])
    assert ratio == 2.0 and quartiles == [1.5, 2.5]


def test_adam_io_pass_reads_four_buffers_and_writes_three():
    tp = _throughput_module()
    p, g, m, v = (np.array([1.0, 2.0], np.float32), np.array([0.5, 0.25], np.float32),
                  np.array([3.0, 4.0], np.float32), np.array([5.0, 6.0], np.float32))
    tp._adam_io(p, g, m, v)  # the plain Python function: same loop as the compiled one
    np.testing.assert_array_equal(m, [3.5, 4.25])
    np.testing.assert_array_equal(v, [5.5, 6.25])
    np.testing.assert_array_equal(p, [1.0 + 3.5 + 5.5, 2.0 + 4.25 + 6.25])
    np.testing.assert_array_equal(g, [0.5, 0.25])


def test_throughput_quick_writes_results(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick",
                    "--latents", "2,20", "--hidden", "64", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    doc = json.loads((tmp_path / "throughput.json").read_text())
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary file left
    assert doc["config"]["latents"] == [2, 20] and doc["config"]["batch"] == 128
    for key in ("cpu_model", "threads", "threadpools", "numpy", "env"):
        assert key in doc["machine"]
    runners = {r["runner"] for r in doc["results"]}
    assert {"numpy", "cpu-fused", "floor", "floor+adam-io"} <= runners
    for r in doc["results"]:
        for key in ("latent", "samples_per_s", "seconds_per_step", "vs_floor", "vs_torch", "params",
                    "bytes_total", "flops_per_step"):
            assert key in r
        assert r["samples_per_s"] > 0
        assert len(r["repeats_s"]) == doc["config"]["repeats"]
        lo, hi = r["vs_floor_quartiles"]
        assert lo <= r["vs_floor"] <= hi
    floor = [r for r in doc["results"] if r["runner"] == "floor"]
    assert all(r["vs_floor"] == 1.0 for r in floor)  # each repeat's ratio to itself
    fused = [r for r in doc["results"] if r["runner"] == "cpu-fused"]
    if "torch-cpu" in runners:
        assert all(r["vs_torch"] > 0 for r in fused)
