"""Smoke test of the throughput benchmark's quick mode (a run, not a timing: nothing is asserted
about speed)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_throughput_quick_writes_json_and_png(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick",
                        "--no-torch", "--latents", "3,7", "--repeats", "1", "--steps", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert [row["latent"] for row in result["rows"]] == [3, 7]
    row = result["rows"][1]
    assert {"numpy", "blas-floor"} <= set(row["step_s"]) and all(v > 0 for v in row["step_s"].values())
    # 784·512 + 512 + 512·14 + 14 + 7·512 + 512 + 512·784 + 784 parameters
    assert row["params"] == 784 * 512 + 512 + 512 * 14 + 14 + 7 * 512 + 512 + 512 * 784 + 784
    assert row["flops"] > 0 and row["bytes"] > 4 * row["params"]
    assert result["machine"]["cpu_count"] >= 1
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"
