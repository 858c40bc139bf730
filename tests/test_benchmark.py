"""Smoke test of the throughput benchmark: --quick runs and writes its JSON and PNG (no timing
is checked: benchmarks are never timed tests)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    assert {"numpy", "cpu-fused", "floor"} <= runners
    for r in doc["results"]:
        for key in ("latent", "samples_per_s", "seconds_per_step", "vs_floor", "vs_torch", "params",
                    "bytes_total", "flops_per_step"):
            assert key in r
        assert r["samples_per_s"] > 0
    fused = [r for r in doc["results"] if r["runner"] == "cpu-fused"]
    if "torch-cpu" in runners:
        assert all(r["vs_torch"] > 0 for r in fused)
