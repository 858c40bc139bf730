"""The numbers a run gives, and small files in the formats a run writes: what tests/test_compat.py
holds later code to.

    PYTHONPATH=<checkout of the code to pin> python tests/data/make_golden.py

was run with the code of commit 0ce8dcb (before the run configuration, the checkpoint module and
the guards were rewritten), offline (the 5,000-digit sample) — again, with that code, when the
environment it records grew the CPU's SIMD targets and LLVM's CPU (the old record matched a CPU
of another vector width, where the bits differ) — and again, with that code, measured on one
thread (on two, another machine with the same record split OpenBLAS's products otherwise) — and wrote

    tests/data/golden.json      what measure() saw: the main job on numpy and cpu-fused, a tiny
                                sweep, a tiny budget curve, settings keys, and the environment
    tests/data/old/train-run/   a main job interrupted mid-epoch (config.json, metrics.jsonl,
                                checkpoint.npz): resuming it must end as golden["old-train"] does
    tests/data/old/sweep/       a sweep folder holding one run's mid-run checkpoint (runs/…resume.npz):
                                the same sweep run again must give golden["old-sweep"]

:func:`measure` runs only the command lines (``minivae.train.main``, ``minivae.sweep.main``) and
reads their files, so the tests call it on the code of today and compare.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import platform
import shutil
import signal
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
OLD = HERE / "old"

# The main job, a few hundred digits: two epochs of 5 steps.
TRAIN = "--latent 6 --hidden 24 --batch-size 64 --limit 300 --epochs 2 --iw-samples 4 --iw-examples 50 --quiet"
# The old run folder kept in the repository: small weights (hidden 4), three epochs.
OLD_TRAIN = "--latent 3 --hidden 4 --batch-size 64 --limit 300 --epochs 3 --iw-samples 2 --iw-examples 20 --quiet"
OLD_TRAIN_STOP = 8  # the forward call (step 3 of epoch 2) at which the old run is interrupted
SWEEP = (
    "--latents 3,5 --hidden 8 --steps 12 --limit 300 --batch-size 64 --iw-samples 2 --iw-examples 20 "
    "--backend numpy --jobs 1 --quiet --keep-models"
)
BUDGETS = (
    "--latents 3 --hidden 8 --budgets 10,20 --lr-schedule wsd --limit 300 --batch-size 64 --iw-samples 2 "
    "--iw-examples 20 --backend numpy --jobs 1 --quiet"
)
OLD_SWEEP = (
    "--latents 3 --hidden 4 --steps 12 --limit 300 --batch-size 64 --iw-samples 2 --iw-examples 20 "
    "--backend numpy --jobs 1 --quiet"
)
OLD_SWEEP_EVERY, OLD_SWEEP_STOP = 7, 9  # checkpoint every 7 steps, interrupted after step 9
KEYS = [  # sweep options → their settings key (sweep.settings_of)
    "--steps 100",
    "--steps 100 --lr 0.003 --batch-size 32 --binarize static",
    "--epochs 3 --limit 500 --iw-samples 7 --iw-examples 30",
    "--steps 100 --lr-schedule cosine",
    "--steps 100 --lr-schedule wsd --decay-frac 0.3",
    "--steps 100 --data-dir data/mnist",
]
TIMES = {"samples_per_s", "wall_s", "first_step_s"}  # what differs from run to run


def which_data(text):
    """A data line up to its first ";": the digits used, not the wording of why a download failed."""
    return text.split(";")[0]


@contextlib.contextmanager
def offline(cache):
    """The tests' offline set-up (tests/conftest.py): an empty cache and a mirror that refuses."""
    old = {k: os.environ.get(k) for k in ("MINIVAE_DATA", "MINIVAE_MIRRORS", "MINIVAE_GEMM_CHOICE")}
    os.environ.update(
        MINIVAE_DATA=str(cache), MINIVAE_MIRRORS="http://127.0.0.1:9/", MINIVAE_GEMM_CHOICE=str(cache / "none.json")
    )
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def environment():
    """What the exact bits depend on besides the code: the BLAS kernels, NumPy and the SIMD targets
    it dispatches to on this CPU (its sums and exp round by them), Numba and the CPU (and features)
    LLVM compiles its kernels for. The threads are not in it: :func:`measure` runs on one thread
    (with two, OpenBLAS split a product otherwise on another machine of this record and the bits
    differed)."""
    import llvmlite.binding as llvm
    import numba
    from threadpoolctl import threadpool_info

    blas = {f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info() if i["user_api"] == "blas"}
    umath = getattr(getattr(np, "_core", None), "_multiarray_umath", None)
    dispatch, features = getattr(umath, "__cpu_dispatch__", []), getattr(umath, "__cpu_features__", {})
    llvm_features = numba.config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return {
        "machine": platform.machine(),
        "numpy": np.__version__,
        "numpy_simd": sorted(f for f in dispatch if features.get(f)),
        "numba": numba.__version__,
        "llvm_cpu": numba.config.CPU_NAME or llvm.get_host_cpu_name(),
        "llvm_features": sorted(f for f in llvm_features.split(",") if f.startswith("+")),
        "blas": sorted(blas),
    }


@contextlib.contextmanager
def one_thread():
    """BLAS and Numba on one thread, here and in the sweep's worker processes (they read
    OPENBLAS_NUM_THREADS when they start): how many threads split a product changes its rounding."""
    import numba
    from threadpoolctl import threadpool_limits

    before, env = numba.get_num_threads(), {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(before)
        for k, v in env.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def arrays_of(path):
    """name → (sha256 of the bytes, dtype, shape, float64 sum) of every array of an .npz but its config."""
    with np.load(path, allow_pickle=False) as f:
        out = {}
        for k in sorted(f.files):
            a = f[k]
            if k == "config":
                continue
            total = float(np.asarray(a, np.float64).sum()) if a.dtype.kind in "fiu" else None
            out[k] = [hashlib.sha256(a.tobytes()).hexdigest(), str(a.dtype), list(a.shape), total]
        return out


def config_of(path):
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["config"]))


def rows_of(path):
    rows = [{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in path.read_text().splitlines()]
    return [dict(r, data=which_data(r["data"])) if isinstance(r.get("data"), str) else r for r in rows]


def train_folder(out):
    """What a main job's folder says: its metrics rows, summary, config and checkpoint arrays."""
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("wall_s")
    summary["data"] = which_data(summary["data"])
    summary["final"] = {k: v for k, v in summary["final"].items() if k not in TIMES}
    return {
        "metrics": rows_of(out / "metrics.jsonl"),
        "summary": summary,
        "config": json.loads((out / "config.json").read_text()),
        "checkpoint_config": config_of(out / "checkpoint.npz"),
        "checkpoint": arrays_of(out / "checkpoint.npz"),
    }


def sweep_folder(out):
    """What a sweep's folder says: its rows, settings.json, its files, and the kept models."""
    models = {}
    for folder in sorted((out / "models").glob("*")) if (out / "models").is_dir() else []:
        models[folder.name] = {
            "config": json.loads((folder / "config.json").read_text()),
            "checkpoint_config": config_of(folder / "checkpoint.npz"),
            "checkpoint": arrays_of(folder / "checkpoint.npz"),
        }
    return {
        "rows": rows_of(out / "results.jsonl"),
        "settings": json.loads((out / "settings.json").read_text()),
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        "arrays": {p.name: arrays_of(p) for p in sorted((out / "runs").glob("*.npz"))},
        "models": models,
    }


def train(argv):
    from minivae import train as command

    code = command.main(argv)
    assert code == 0, (argv, code)


def sweep(argv):
    from minivae import sweep as command

    code = command.main(argv)
    assert code == 0, (argv, code)


def measure(tmp, parts=("train-numpy", "train-cpu-fused", "sweep", "budgets", "keys", "old-train", "old-sweep")):
    """The numbers of today's code, in golden.json's layout (only ``parts``); the "old-…" parts resume
    the files in tests/data/old/ (copied into ``tmp`` first)."""
    tmp = pathlib.Path(tmp)
    got = {}
    with offline(tmp / "cache"), one_thread():
        for backend in ("numpy", "cpu-fused"):
            if f"train-{backend}" in parts:
                out = tmp / f"train-{backend}"
                train([*TRAIN.split(), "--backend", backend, "--out", str(out)])
                got[f"train-{backend}"] = train_folder(out)
        if "sweep" in parts:
            sweep([*SWEEP.split(), "--out", str(tmp / "sweep")])
            got["sweep"] = sweep_folder(tmp / "sweep")
        if "budgets" in parts:
            sweep([*BUDGETS.split(), "--out", str(tmp / "budgets")])
            got["budgets"] = sweep_folder(tmp / "budgets")
        if "keys" in parts:
            got["keys"] = keys()
        if "old-train" in parts:
            out = pathlib.Path(shutil.copytree(OLD / "train-run", tmp / "old-train"))
            train(["--resume", str(out), "--quiet"])
            got["old-train"] = train_folder(out)
        if "old-sweep" in parts:
            out = pathlib.Path(shutil.copytree(OLD / "sweep", tmp / "old-sweep"))
            sweep([*OLD_SWEEP.split(), "--out", str(out)])
            got["old-sweep"] = sweep_folder(out)
    return got


def keys():
    from minivae import sweep as command

    out = {}
    for line in KEYS:
        args = command.parse_args(line.split())
        steps = args.steps or 3 * 5
        out[line] = list(command.settings_of(args, steps))
    return out


# ------------------------------------------------------------------ the old files (made once)


def make_old_train(tmp):
    """A main job interrupted (SIGINT) at step 3 of epoch 2, and the same run straight through."""
    from minivae import train as command
    from minivae.vae import VAE

    real, calls = VAE.forward, [0]

    def forward(self, x, eps=None):
        calls[0] += 1
        if calls[0] == OLD_TRAIN_STOP:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, x, eps)

    out = tmp / "train-run"
    VAE.forward = forward
    try:
        code = command.main([*OLD_TRAIN.split(), "--backend", "numpy", "--out", str(out)])
    finally:
        VAE.forward = real
    assert code == 130, code
    with np.load(out / "checkpoint.npz") as ck:
        assert (int(ck["epoch"]), int(ck["step"])) == (1, 3)
    shutil.rmtree(OLD / "train-run", ignore_errors=True)
    (OLD / "train-run").mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "checkpoint.npz"):
        shutil.copy(out / name, OLD / "train-run" / name)


def make_old_sweep(tmp):
    """A sweep folder whose one run was interrupted after step 9 (its checkpoint at step 7)."""
    from minivae import sweep as command

    args = command.parse_args([*OLD_SWEEP.split(), "--out", str(tmp / "sweep")])
    settings, key = command.settings_of(args, args.steps)
    cfg = dict(settings, model="vae", latent=3, hidden=[4], seed=0, out=str(tmp / "sweep"), settings=key)
    cfg.update(backend="numpy", threads=None, iw_check=None, keep_models=False, warm_start=None)
    run_epoch, count = command.loop.run_epoch, [0]

    def interrupted(model, opt, x, order, after_step, skip=0, lr_at=None):
        def hook(*a):
            finished = after_step(*a)
            count[0] += 1
            if count[0] == OLD_SWEEP_STOP:
                raise KeyboardInterrupt
            return finished

        return run_epoch(model, opt, x, order, hook, skip=skip, lr_at=lr_at)

    command.loop.run_epoch, every = interrupted, command.RESUME_EVERY
    command.RESUME_EVERY = OLD_SWEEP_EVERY
    try:
        command.run_one(cfg)
        raise AssertionError("not interrupted")
    except KeyboardInterrupt:
        pass
    finally:
        command.loop.run_epoch, command.RESUME_EVERY = run_epoch, every
    resume = sorted((tmp / "sweep" / "runs").glob("*.resume.npz"))
    assert len(resume) == 1, resume
    shutil.rmtree(OLD / "sweep", ignore_errors=True)
    (OLD / "sweep" / "runs").mkdir(parents=True)
    shutil.copy(resume[0], OLD / "sweep" / "runs" / resume[0].name)


def main():
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        tmp = pathlib.Path(tmp)
        with offline(tmp / "cache"), one_thread():
            make_old_train(tmp / "make")
            make_old_sweep(tmp / "make")
        golden = measure(tmp / "measure")
    golden["environment"] = environment()
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} and {OLD}", file=sys.stderr)


if __name__ == "__main__":
    main()
