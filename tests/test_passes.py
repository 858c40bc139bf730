"""benchmarks/passes.py on tiny shapes: the runners compute what the step and the kernels compute,
and the command end to end with --quick (nothing it times is checked: benchmarks are never timed
tests)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_benchmark import BEYOND_THE_MACHINE, refused_line

from benchmarks import passes

ROOT = Path(__file__).resolve().parents[1]


def test_the_all_threads_step_is_the_shipped_step():
    """Thresholds 0 change where the passes run, not what they compute: the same loss and the same
    parameters after a step (the prange versions split the same element-wise work)."""
    a, opt_a, x = passes.build(3, (8,), 4, parallel=False)
    b, opt_b, _ = passes.build(3, (8,), 4, parallel=True)
    assert b.engine.ops.parallel_min_adam == 0 and a.engine.ops.parallel_min_adam > 0
    for model, opt in ((a, opt_a), (b, opt_b)):
        model.forward(x)
        opt.step(model.backward())
    assert a.last == b.last
    np.testing.assert_array_equal(a.params.flat, b.params.flat)


def test_quick_run_writes_every_runner_and_the_machine(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "passes.py"), "--quick", "--latents", "2", "--hidden", "16"]
    cmd += ["--batch", "8", "--threads", "1", "--repeats", "2", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "passes-t1.json").read_text())
    for key in ("cpu_model", "cpu_isa", "blas", "threads", "load_start", "load_end"):
        assert key in doc["machine"], key
    entry = doc["latents"]["2"]
    assert len(entry["median_s"]) == 6 and all(t > 0 for t in entry["median_s"].values())
    assert set(entry["one_over_all"]) == {"step", "Adam", "loss"}
    assert "one thread (or shipped) / all threads" in r.stdout


def test_a_bad_option_is_one_line_and_exit_2(capsys):
    for bad in (["--threads", "0"], ["--latents", "x"], ["--bogus"]):
        try:
            code = passes.main(bad)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("benchmarks.passes: error: "), (bad, err)


def _refused(tmp_path, argv, capsys):
    out = tmp_path / "out"
    line = refused_line(passes.main, "passes", ["--quick", "--threads", "1", "--out", out, *argv], capsys)
    assert not out.exists()  # refused before anything was timed or written
    return line


def test_a_size_time_or_out_beyond_the_machine_is_refused_before_anything_runs(tmp_path, capsys):
    for bad in BEYOND_THE_MACHINE:
        if "--peak-n" not in bad:  # passes measures no peak
            _refused(tmp_path, bad, capsys)
    assert "/proc/nope/x" in _refused(tmp_path, ["--out", "/proc/nope/x"], capsys)
    assert not Path("/proc/nope").exists()
    (tmp_path / "taken" / "passes-t1.json").mkdir(parents=True)
    assert "passes-t1.json" in _refused(tmp_path, ["--out", str(tmp_path / "taken")], capsys)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["passes-t1.json"]
