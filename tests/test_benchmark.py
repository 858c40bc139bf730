"""Smoke test of the throughput benchmark: --quick runs and writes its JSON and PNG (no timing
is checked: benchmarks are never timed tests)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    p, g, m, v = (
        np.array([1.0, 2.0], np.float32),
        np.array([0.5, 0.25], np.float32),
        np.array([3.0, 4.0], np.float32),
        np.array([5.0, 6.0], np.float32),
    )
    tp._adam_io(p, g, m, v)  # the plain Python function: same loop as the compiled one
    np.testing.assert_array_equal(m, [3.5, 4.25])
    np.testing.assert_array_equal(v, [5.5, 6.25])
    np.testing.assert_array_equal(p, [1.0 + 3.5 + 5.5, 2.0 + 4.25 + 6.25])
    np.testing.assert_array_equal(g, [0.5, 0.25])


def test_throughput_quick_writes_results(tmp_path):
    # torch-compile and jax-jit (compiling takes a minute) have their own test below
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--quick",
            "--latents",
            "2,20",
            "--hidden",
            "64",
            "--peak-n",
            "64",
            "--out",
            str(tmp_path),
            "--runners",
            "numpy,cpu-fused,torch-cpu,floor,floor+adam-io",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    doc = json.loads((tmp_path / "throughput.json").read_text())
    assert (tmp_path / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary file left
    assert doc["config"]["latents"] == [2, 20] and doc["config"]["batch"] == 128
    assert doc["config"]["gemm_choice"]["ours"] == []  # the tests' (absent) table: OpenBLAS everywhere
    for key in ("cpu_model", "threads", "threadpools", "numpy", "env"):
        assert key in doc["machine"]
    runners = {r["runner"] for r in doc["results"]}
    assert {"numpy", "cpu-fused", "floor", "floor+adam-io"} <= runners
    for r in doc["results"]:
        for key in (
            "latent",
            "samples_per_s",
            "seconds_per_step",
            "vs_floor",
            "vs_torch",
            "params",
            "bytes_total",
            "flops_per_step",
        ):
            assert key in r
        assert r["samples_per_s"] > 0
        assert len(r["repeats_s"]) == doc["config"]["repeats"]
        lo, hi = r["vs_floor_quartiles"]
        assert lo <= r["vs_floor"] <= hi
    peak = doc["config"]["peak"]
    assert peak["n"] == 64 and peak["gflops"] == max(peak["by_library"].values()) > 0
    for r in doc["results"]:
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / peak["gflops"])
    floor = [r for r in doc["results"] if r["runner"] == "floor"]
    assert all(r["vs_floor"] == 1.0 for r in floor)  # each repeat's ratio to itself
    fused = [r for r in doc["results"] if r["runner"] == "cpu-fused"]
    if "torch-cpu" in runners:
        assert all(r["vs_torch"] > 0 for r in fused)


def _installed(name):
    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(not _installed("jax"), reason="jax is not installed (the bench extra)")
def test_jax_runner_trains():
    """The jax-jit runner's step lowers the loss on a fixed batch (so it does take the gradient
    and update the donated parameters), and its losses are finite."""
    tp = _throughput_module()
    x = np.random.default_rng(1).random((16, tp.D)).astype(np.float32)
    step, sync = tp.jax_runner(3, (16,), 16, x)
    losses = []
    for _ in range(60):
        step()
        losses.append(float(step.loss))
    sync()
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0  # ~545 nats at the start


@pytest.mark.skipif(not (_installed("jax") or _installed("torch")), reason="neither jax nor torch is installed")
def test_throughput_cpu_peers_quick(tmp_path):
    peers = [n for n, mod in (("jax-jit", "jax"), ("torch-compile", "torch")) if _installed(mod)]
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--quick",
            "--threads",
            "1",
            "--latents",
            "2",
            "--hidden",
            "16",
            "--peak-n",
            "64",
            "--out",
            str(tmp_path),
            "--runners",
            ",".join(["cpu-fused"] + peers),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    doc = json.loads((tmp_path / "throughput.json").read_text())
    rows = {r["runner"]: r for r in doc["results"]}
    assert set(peers) | {"cpu-fused"} == set(rows), doc["config"]["notes"]
    assert all(r["samples_per_s"] > 0 and r["fraction_of_peak"] > 0 for r in rows.values())
    vs = doc["config"]["vs_fastest_peer"]["2"]
    assert vs["peer"] in peers and vs["quartiles"][0] <= vs["ratio"] <= vs["quartiles"][1]
    if len(os.sched_getaffinity(0)) > 1:  # one thread: every runner pinned to one core
        assert len(doc["config"]["pinned_cores"]) == 1
    if "jax-jit" in peers:
        assert "--xla_cpu_multi_thread_eigen=false" in doc["config"]["xla_flags"]
        assert doc["machine"]["jax"]


def test_default_outputs_are_not_the_committed_results():
    """A run without --out writes into runs/bench/ under the current folder (ignored by git), never
    into benchmarks/results, which only --out benchmarks/results updates."""
    from benchmarks import kernels

    tp = _throughput_module()
    for default in (tp.parse_args([]).out, kernels.DEFAULT_OUT):
        assert default == Path("runs/bench") and not default.is_absolute()
        assert (ROOT / default).resolve() != (ROOT / "benchmarks" / "results").resolve()
    if shutil.which("git") is None:
        return
    for path in ("runs/bench/throughput.json", "benchmarks/runs/bench/gemm-cpu-t1.json"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, capture_output=True)
        assert ignored.returncode in (0, 128), path  # 128: not a git checkout, so nothing to ignore


def test_kernels_cpu_mode_writes_results(tmp_path):
    """Without --out or --json: into runs/bench/ of the current folder, named by the threads."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.kernels",
            "--cpu",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--latents",
            "2",
            "--versions",
            "3,4",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
        timeout=300,
    )
    doc = json.loads((tmp_path / "runs" / "bench" / "gemm-cpu-t1.json").read_text())
    assert doc["threads"] == 1
    assert doc["machine"]["threads"] == 1 and doc["machine"]["cpu_isa"] and "load_end" in doc["machine"]
    if len(os.sched_getaffinity(0)) > 1:
        assert len(doc["pinned_cores"]) == 1
    step = doc["latents"]["2"]
    assert len(step["products"]) == 11
    names = {"ours v3", "ours v4", "OpenBLAS"} | ({"XLA"} if _installed("jax") else set())
    assert set(step["whole_step"]) == names
    assert step["whole_step"]["OpenBLAS"]["fraction_of_ref"] == 1.0
    for p in step["products"]:
        assert all(p["gflops"][n] > 0 for n in names)
    epilogues = step["epilogues"]  # the four forward products and the four weight gradients
    assert len(epilogues) == 8 and all(min(e["seconds"].values()) > 0 for e in epilogues)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs CPU affinity and two cores"
)
def test_limit_cores_pins_every_thread_of_the_process():
    """In a child process: after limit_cores(1), the threads that existed before (OpenBLAS's
    pool, started when NumPy was imported) and a thread started after all run on one core."""
    code = (
        "import os, threading, numpy\n"
        "from benchmarks import peers\n"
        "cores = peers.limit_cores(1)\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))\n"
        "t.start(); t.join()\n"
        "tasks = [os.sched_getaffinity(int(tid)) for tid in os.listdir('/proc/self/task')]\n"
        "assert cores is not None and len(cores) == 1, cores\n"
        "assert all(a == set(cores) for a in tasks + seen), (cores, tasks, seen)\n"
        "assert peers.limit_cores(1) is None  # already on one core: nothing to do\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("args", [["--versions", "9"], ["--latents", "x"], ["--latents", "0"]])
def test_kernels_cpu_mode_usage_errors_are_one_line(args):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernels", "--cpu", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_result_names_the_choice_table_without_the_home_folder(monkeypatch, tmp_path):
    from benchmarks import throughput

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MINIVAE_GEMM_CHOICE", raising=False)  # the default place, under the home folder
    config = {}
    throughput.note_gemm_choice(config, ["cpu-fused"])
    assert config["gemm_choice"]["table"] == "~/.cache/minivae/gemm-choice.json"
    assert throughput.machine.home_as_tilde("/elsewhere/table.json") == "/elsewhere/table.json"


HUGE = "99999999999999999999999"
BEYOND_THE_MACHINE = [  # options of throughput and roofline (passes has no --peak-n), refused before any timing
    ["--latents", HUGE],
    ["--hidden", HUGE],
    ["--batch", HUGE],
    ["--peak-n", HUGE],
    ["--latents", "1000000000", "--hidden", "1000000"],
    ["--threads", HUGE],
    ["--settle", HUGE],
]


def refused_line(main, name, argv, capsys):
    """A benchmark script's ``main(argv)`` refused: exit code 2 and one line on stderr,
    ``benchmarks.<name>: error: …``, which is returned."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"benchmarks.{name}: error: "), (argv, err)
    return err[0]


@pytest.mark.parametrize("bad", [*BEYOND_THE_MACHINE, ["--out", "/proc/nope/x"]])
def test_throughput_refuses_a_bad_value_before_anything_is_timed(bad, tmp_path, capsys):
    from benchmarks import throughput

    out = tmp_path / "out"
    refused_line(throughput.main, "throughput", ["--quick", "--runners", "numpy", "--out", out, *bad], capsys)
    assert not out.exists() and not Path("/proc/nope").exists()


def test_throughput_refuses_a_result_name_taken_by_a_folder(tmp_path, capsys):
    from benchmarks import throughput

    (tmp_path / "throughput.json").mkdir()
    assert throughput.main(["--quick", "--runners", "numpy", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmarks.throughput: error: ") and "throughput.json" in err[0]
    assert [p.name for p in tmp_path.iterdir()] == ["throughput.json"]  # nothing written beside it
    assert not any((tmp_path / "throughput.json").iterdir())


def test_no_warmup_steps_is_allowed():
    from benchmarks import throughput

    calls = []
    timed = throughput.measure({"step": (lambda: calls.append(1), None)}, 2, 0, 1e-4, 0)
    ts, n = timed["step"]
    assert len(ts) == 2 and n >= 1 and len(calls) == 1 + 2 * n  # one call to size the repeats, no warm-up


def test_throughput_says_a_write_that_fails_after_the_timing_in_one_line(monkeypatch, tmp_path, capsys):
    from benchmarks import throughput

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(throughput, "atomic_write_text", refuse)
    doc = {"config": {}, "results": []}

    def run(args):  # the timing is done: only the writing is left
        return throughput.write_results(tmp_path / "out", doc, [])

    assert throughput.run_command("benchmarks.throughput", run, lambda argv: None) == 1
    err = capsys.readouterr().err.strip().splitlines()
    path = tmp_path / "out" / "throughput.json"
    assert err == [f"benchmarks.throughput: error: cannot write {path}: Permission denied"]
    assert not any((tmp_path / "out").iterdir())
