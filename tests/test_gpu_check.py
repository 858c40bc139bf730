"""benchmarks/gpu_check: its paths that need no GPU (bad arguments, no GPU) and its summary logic
on made-up result documents. The GPU steps themselves run only on a machine with a GPU."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BASH = shutil.which("bash")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, path):
    """The shell entry point with PATH = ``path`` only (so no nvidia-smi), Python given as $PYTHON."""
    env = dict(os.environ, PATH=str(path), PYTHON=sys.executable)
    return subprocess.run(
        [BASH, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def _one_line(proc):
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def bare_path(tmp_path):
    """A PATH with no nvidia-smi on it."""
    d = tmp_path / "bin"
    d.mkdir()
    return d


def test_without_a_gpu_one_line_and_exit_3(tmp_path, bare_path):
    out = tmp_path / "new" / "out"
    proc = _run([out], bare_path)
    assert proc.returncode == 3
    line = _one_line(proc)
    assert "no NVIDIA GPU" in line and "nvidia-smi not found" in line
    assert not (tmp_path / "new").exists()  # the folder was checked, not made: nothing left behind


def test_an_nvidia_smi_that_lists_no_gpu_is_no_gpu(tmp_path, bare_path):
    smi = bare_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n"
    )
    smi.chmod(0o755)
    proc = _run([tmp_path / "out"], f"{bare_path}{os.pathsep}/bin{os.pathsep}/usr/bin")
    assert proc.returncode == 3
    assert "nvidia-smi lists no GPU (NVIDIA-SMI has failed" in _one_line(proc)


@pytest.mark.parametrize(
    "args, says",
    [
        ([], "the following arguments are required: out"),
        (["{tmp}/out", "--bogus"], "unrecognized arguments: --bogus"),
        (["{tmp}/file/out"], "cannot write into the output folder"),  # below a plain file
        (["{tmp}/file"], "the output folder {tmp}/file exists and is not a folder"),
        (["{tmp}/new/out", "--data-dir", "{tmp}/nowhere"], "--data-dir"),
        (["", "--no-install"], "argument out: expected a path, got ''"),  # '' would be the current folder
    ],
)
def test_bad_arguments_one_line_and_exit_2_before_looking_for_a_gpu(tmp_path, bare_path, args, says):
    (tmp_path / "file").write_text("")
    proc = _run([a.format(tmp=tmp_path) for a in args], bare_path)
    assert proc.returncode == 2
    line = _one_line(proc)
    assert line.startswith("gpu_check: error:") and says.format(tmp=tmp_path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "file"]  # nothing made, nothing written


def test_a_blank_output_path_is_refused(tmp_path, monkeypatch, capsys):
    """A path of spaces names no folder: one line, exit 2, nothing made (run in-process)."""
    gc = _gpu_check()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        gc.main([" ", "--no-install"])
    assert e.value.code == 2 and "expected a path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_output_folder_is_made_only_when_the_work_begins(tmp_path, monkeypatch, capsys):
    """Its parents with it, once the arguments are checked and a GPU is found; a folder that cannot
    be made then is one line, exit 2, and the folders made on the way are removed again."""
    gc = _gpu_check()
    out, seen = tmp_path / "new" / "out", []

    def find_gpu():
        seen.append((tmp_path / "new").exists())
        return True, ["GPU 0: Made-up GPU"]

    monkeypatch.setattr(gc, "find_gpu", find_gpu)
    monkeypatch.setattr(gc.Check, "all_steps", lambda self, args, gpu: None)
    assert gc.main([str(out), "--no-install"]) == gc.EXIT_OK
    assert seen == [False] and sorted(p.name for p in out.iterdir()) == sorted(gc.OUT_FILES)
    mkdir = gc.Path.mkdir

    def refused(self, *args, **kwargs):  # the parent is made, the folder itself cannot be
        if self.name == "out":
            raise PermissionError(13, "Permission denied")
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(gc.Path, "mkdir", refused)
    capsys.readouterr()
    assert gc.main([str(tmp_path / "other" / "out"), "--no-install"]) == gc.EXIT_USAGE
    line = capsys.readouterr().err.strip()
    assert line == f"gpu_check: error: cannot write into the output folder {tmp_path}/other/out: Permission denied"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_budget_fits_eight_minutes_and_out_files_fit_eight():
    gc = _gpu_check()
    assert sum(gc.BUDGET_S.values()) <= 7.5 * 60  # start-up and the summary need the rest
    assert gc.INSTALL_EXTRAS_S < gc.BUDGET_S["install"]
    assert len(gc.OUT_FILES) <= 8


# --------------------------------------------------------------------------------------------
# The summary logic, on made-up documents
# --------------------------------------------------------------------------------------------


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
 <testcase classname="tests.test_x" name="test_ok" time="0.1"/>
 <testcase classname="tests.test_x" name="test_bad" time="0.1">
  <failure message="AssertionError: 3 != 4">tb</failure></testcase>
 <testcase classname="tests.test_x" name="test_broken" time="0.1">
  <error message="fixture exploded">tb</error></testcase>
 <testcase classname="tests.test_x" name="test_skip" time="0"><skipped message="no GPU" type="pytest.skip"/></testcase>
</testsuite></testsuites>
"""


def test_parse_junit_counts_and_messages(tmp_path):
    gc = _gpu_check()
    path = tmp_path / "j.xml"
    path.write_text(JUNIT)
    r = gc.parse_junit(path)
    assert (r["tests"], r["passed"], r["failed"], r["errors"], r["skipped"]) == (4, 1, 1, 1, 1)
    assert r["failures"][0] == {"test": "tests.test_x::test_bad", "message": "AssertionError: 3 != 4"}
    assert r["skips"] == {"no GPU": 1}
    assert gc.parse_junit(tmp_path / "missing.xml") is None
    (tmp_path / "cut.xml").write_text(JUNIT[:100])
    assert gc.parse_junit(tmp_path / "cut.xml") is None


def _tp_doc(cupy_vs_torch, skipped=None):
    rows = []
    for z in (20, 1000):
        rows.append({"runner": "torch-cuda", "latent": z, "samples_per_s": 10_000.0, "vs_torch": None})
        rows.append(
            {"runner": "cupy", "latent": z, "samples_per_s": 10_000.0 * cupy_vs_torch, "vs_torch": cupy_vs_torch}
        )
        rows.append({"runner": "cupy-graph", "latent": z, "samples_per_s": 40_000.0, "vs_torch": 4.0})
    return {"config": {"latents": [20, 1000], "skipped": skipped or {}, "notes": {}}, "results": rows}


@pytest.mark.parametrize("ratio, verdict", [(2.5, "met"), (2.0, "met"), (1.6, "not met")])
def test_cupy_target_reads_batch_128_z_1000(ratio, verdict):
    gc = _gpu_check()
    t = gc.target_cupy_vs_torch({"128": _tp_doc(ratio), "1024": _tp_doc(0.1)})  # batch 1024 is not the target
    assert t["verdict"] == verdict and t["value"] == ratio
    assert f"{ratio:.2f}×" in t["detail"] and "cupy-graph 4.00×" in t["detail"]


def test_cupy_target_without_torch_says_why():
    gc = _gpu_check()
    doc = _tp_doc(2.5, skipped={"torch-cuda": "PyTorch not importable: torch runners skipped"})
    doc["results"] = [r for r in doc["results"] if r["runner"] != "torch-cuda"]
    for r in doc["results"]:
        r["vs_torch"] = None
    t = gc.target_cupy_vs_torch({"128": doc})
    assert t["verdict"] == "not measured" and t["value"] is None
    assert "no torch-cuda" in t["detail"] and "PyTorch not importable" in t["detail"]
    assert gc.target_cupy_vs_torch({})["verdict"] == "not measured"


def _kernels_doc(v3_seconds, compute_type="FP32"):
    """Two products; cuBLAS takes 1 s and 3 s; v3 the given times."""
    products = []
    for label, cublas, v3, flops in (("a", 1.0, v3_seconds[0], 2e9), ("b", 3.0, v3_seconds[1], 6e9)):
        secs = {"numba v3": v3, "cuBLAS": cublas}
        products.append(
            {
                "product": label,
                "flops": flops,
                "seconds": secs,
                "gflops": {n: flops / s / 1e9 for n, s in secs.items()},
                "fraction_of_cublas": {n: cublas / s for n, s in secs.items()},
            }
        )
    return products, compute_type


def test_v3_target_is_the_whole_step_fraction_from_kernels_summarize():
    gc = _gpu_check()
    kernels = importlib.import_module("benchmarks.kernels")
    products, ct = _kernels_doc((1.0, 9.0))  # per product 100% and 33%; whole step 4 s / 10 s = 40%
    whole = kernels.summarize(products, ["numba v3", "cuBLAS"])
    assert whole["numba v3"]["fraction_of_cublas"] == pytest.approx(0.4)
    assert whole["numba v3"]["gflops"] == pytest.approx(8e9 / 10.0 / 1e9)
    assert whole["numba v3"]["fraction_min"] == pytest.approx(1 / 3)
    assert whole["cuBLAS"]["fraction_of_cublas"] == 1.0
    doc = {"products": products, "whole_step": whole, "cublas_float32_compute_type": ct}
    t = gc.target_v3_vs_cublas(doc)
    assert (
        t["verdict"] == "not met"
        and t["value"] == pytest.approx(0.4)
        and "40% over the step's 2 products" in t["detail"]
    )
    products, ct = _kernels_doc((1.5, 4.5))  # 4 s / 6 s = 67%
    doc = {
        "products": products,
        "whole_step": kernels.summarize(products, ["numba v3", "cuBLAS"]),
        "cublas_float32_compute_type": "TF32",
    }
    t = gc.target_v3_vs_cublas(doc)
    assert t["value"] == pytest.approx(2 / 3) and t["verdict"] == "met (but cuBLAS ran as TF32, not FP32)"
    assert gc.target_v3_vs_cublas(None)["verdict"] == "not measured"


def test_markdown_summary_holds_targets_steps_and_tables():
    gc = _gpu_check()
    kernels = importlib.import_module("benchmarks.kernels")
    products, ct = _kernels_doc((1.5, 4.5))
    kdoc = {
        "products": products,
        "whole_step": kernels.summarize(products, ["numba v3", "cuBLAS"]),
        "cublas_float32_compute_type": ct,
    }
    state = {
        "started": "2030-01-01 00:00 UTC",
        "seconds": 400.0,
        "env": {
            "gpus": ["GPU 0: NVIDIA H100 80GB HBM3"],
            "driver": "580.1",
            "cuda": "13.0",
            "cupy": {"version": "14.2.0"},
            "versions": {"numba-cuda": "0.21"},
            "torch": {"version": "2.11"},
        },
        "steps": [
            {"step": "install", "status": "passed", "limit_s": 100, "seconds": 3.0, "tail": ""},
            {
                "step": "kernels",
                "status": "timed out",
                "limit_s": 45,
                "seconds": 45.0,
                "tail": "compiling\nstill compiling",
            },
        ],
        "tests": {
            "tests/test_cupy_kernels.py": {
                "tests": 2,
                "passed": 1,
                "failed": 1,
                "errors": 0,
                "skipped": 0,
                "failures": [{"test": "t::x", "message": "boom\nmore"}],
                "skips": {},
            },
            "tests/sim_numba_cuda.py": None,
        },
        "kernels": kdoc,
        "throughput": {"128": _tp_doc(2.5)},
        "train": {
            "metrics": [
                {"epoch": 2, "samples_per_s": 51234.0, "train_loss": 120.0, "test_loss": 110.0, "active_units": 40}
            ],
            "summary": {"data": "MNIST: 60,000 training digits", "wall_s": 30.0, "test_iw_nll": 100.5},
        },
    }
    state["targets"] = {
        "cupy_vs_torch": gc.target_cupy_vs_torch(state["throughput"]),
        "v3_vs_cublas": gc.target_v3_vs_cublas(kdoc),
    }
    md = gc.render_markdown(state)
    assert md.startswith("# GPU check: GPU 0: NVIDIA H100 80GB HBM3")
    assert "| `cupy` ≥ 2× PyTorch CUDA eager (samples/s), batch 128, Z = 1000 | **met** | 2.50×" in md
    assert "| Numba-CUDA matmul v3 ≥ 50% of cuBLAS FP32 (the step's products) | **met** | 67%" in md
    assert "| kernels | 45 | 45.0 | timed out: still compiling |" in md
    assert "- tests/test_cupy_kernels.py: 1 passed, 1 failed" in md and "FAILED t::x: boom" in md
    assert "- tests/sim_numba_cuda.py: no result" in md
    assert "| 128 | 1000 | 25,000 | 40,000 | — | 10,000 | 2.50 | 4.00 | — |" in md
    assert "epoch 2: 51,234 samples/s" in md and "log-likelihood ≈ -100.50 nats" in md
    json.dumps(state)  # what summary.json is made of stays JSON


def test_main_runs_every_step_in_order_and_writes_the_files(tmp_path, monkeypatch, capsys):
    """The whole check with a GPU found and every child command faked: each step in its order,
    the commands it gives the benchmarks, the eight files, and exit 1 when a step fails."""
    gc = _gpu_check()
    commands = []

    def fake_run(cmd, limit_s, log, env=None):
        commands.append([str(c) for c in cmd])
        failed = "minivae.train" in commands[-1]
        rec = {"command": " ".join(commands[-1]), "limit_s": limit_s, "seconds": 0.1, "rc": int(failed)}
        return dict(rec, timed_out=False, tail="")

    monkeypatch.setattr(gc, "find_gpu", lambda: (True, ["GPU 0: Made-up GPU"]))
    monkeypatch.setattr(gc, "run", fake_run)
    monkeypatch.setattr(gc, "step_env", lambda py, log, tmp, state, gpu, limit_s: fake_run(["env"], limit_s, log))
    out = tmp_path / "out"
    assert gc.main([str(out), "--no-install"]) == gc.EXIT_FAILED  # the faked main job failed
    steps = [s["step"] for s in json.loads((out / "summary.json").read_text())["steps"]]
    assert steps == ["install", "env", *[s[0] for s in gc.TEST_STEPS], "kernels", "throughput-128"] + [
        "throughput-1024",
        "main-job",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(gc.OUT_FILES)
    kernels = next(c for c in commands if "benchmarks.kernels" in c)
    assert "--json" in kernels  # the benchmark's results go into the check's own folder
    for c in (c for c in commands if "benchmarks/throughput.py" in c):
        assert "--out" in c and c[c.index("--out") + 1] != "benchmarks/results"
    said = capsys.readouterr().out
    assert "gpu_check: GPU 0: Made-up GPU;" in said and "# GPU check:" in said  # the summary, printed


def test_the_env_step_records_the_host_machine(tmp_path, monkeypatch, capsys):
    gc = _gpu_check()
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Driver Version: 550.54   CUDA Version: 12.4'\n")
    smi.chmod(0o755)
    monkeypatch.setattr(gc.shutil, "which", lambda name: str(smi))
    monkeypatch.setattr(gc, "run", lambda cmd, limit_s, log, env=None: {"rc": 0, "timed_out": False, "tail": ""})
    state = {"load_start": [0.5, 0.4, 0.3]}
    with open(tmp_path / "log.txt", "w") as log:
        gc.step_env(sys.executable, log, tmp_path, state, ["GPU 0: Made-up GPU"], 10)
    rec = state["env"]["machine"]
    assert state["env"]["driver"] == "550.54" and state["env"]["cuda"] == "12.4"
    assert rec["load_start"] == [0.5, 0.4, 0.3] and rec["cpu_isa"] and "blas" in rec
    assert capsys.readouterr().out.startswith("machine: ")
