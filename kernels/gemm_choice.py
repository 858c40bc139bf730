"""Which matrix product the cpu-fused backend runs, per shape: OpenBLAS or ours, measured once.

Our CPU GEMM (:mod:`kernels.gemm_cpu`) is faster than OpenBLAS on some shapes of a training step
and slower on others, and which wins depends on the machine and the thread count. So the choice is
not guessed: ``python -m kernels.gemm_choice`` times both on the 11 products of a step at each
latent size asked for, keeps the faster one per shape, then checks those picks in whole training
steps (:func:`step_check`: a pick that makes the step slower is dropped), and writes the result
into a small JSON file (the *choice table*). :class:`kernels.cpu_fused.CpuFusedOps` reads that
file once and, for every product whose shape it lists as ``"ours"``, calls
:func:`kernels.gemm_cpu.matmul` (v3 on one thread, v4 on more); every other product, and every
product when there is no table, goes to OpenBLAS (``np.matmul``) as before.

A shape is the key ``"M×K×N ta tb threads"``: the product op(a) (M, K) · op(b) (K, N) with the
transpose flags, at the number of Numba/BLAS threads it was timed with. One entry:

    {"blas_ms": 0.41, "ours_ms": 0.47, "pick": "blas"}

The table lives at ``$MINIVAE_GEMM_CHOICE`` when that is set, else in
``~/.cache/minivae/gemm-choice.json``. Both products compute the same sums in a different order,
so a model trained with one table and resumed with another (or with none) continues from the
same state but does not reproduce the uninterrupted run bit for bit; keep the table while a run
is resumed. A table that cannot be read is ignored with one warning (OpenBLAS everywhere).

    python -m kernels.gemm_choice [--latents 20,1000] [--threads 1] [--repeats 30]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import warnings
from functools import partial

import numpy as np

ENV = "MINIVAE_GEMM_CHOICE"
PICKS = ("blas", "ours")


def table_path():
    """Where the choice table is read and written."""
    if os.environ.get(ENV):
        return pathlib.Path(os.environ[ENV])
    return pathlib.Path.home() / ".cache" / "minivae" / "gemm-choice.json"


def key(M, K, N, ta, tb, threads):
    """The table's key of one product: ``"128×784×512 0 0 1"``."""
    return f"{M}×{K}×{N} {int(bool(ta))} {int(bool(tb))} {threads}"


def load(path=None):
    """The set of keys whose pick is ``"ours"``; empty when there is no table. A table that is not
    a JSON object of entries with a valid ``pick`` is ignored with one warning."""
    path = pathlib.Path(path) if path is not None else table_path()
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return frozenset()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        warnings.warn(f"{path}: cannot read the GEMM choice table ({e}); using OpenBLAS", stacklevel=2)
        return frozenset()
    if not isinstance(table, dict) or not all(isinstance(v, dict) and v.get("pick") in PICKS for v in table.values()):
        warnings.warn(f"{path}: not a GEMM choice table; using OpenBLAS", stacklevel=2)
        return frozenset()
    return frozenset(k for k, v in table.items() if v["pick"] == "ours")


def _median_ms(fn, repeats):
    fn()  # warm-up (and, for ours, the compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def measure(shapes, threads, repeats=30, seed=0, timer=_median_ms):
    """Time OpenBLAS and our GEMM (v3 on one thread, v4 on more) on each (M, K, N, ta, tb) of
    ``shapes`` with the current thread count ``threads``, alternating the two; returns the table's
    entries {key: {"blas_ms", "ours_ms", "pick"}}. Each of ours is first checked against the
    float64 product (a wrong kernel is never picked). ``timer(fn, repeats)`` gives milliseconds."""
    from kernels import gemm_cpu

    rng = np.random.default_rng(seed)
    version = 3 if threads == 1 else 4
    entries = {}
    for M, K, N, ta, tb in shapes:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        out = np.empty((M, N), np.float32)
        ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
        gemm_cpu.matmul(a, b, out, ta, tb, version=version)
        if not np.allclose(out, ref, rtol=1e-4, atol=1e-4 * max(K, 1) ** 0.5):
            raise AssertionError(f"gemm_cpu v{version} is wrong on {key(M, K, N, ta, tb, threads)}")
        x, y = (a.T if ta else a), (b.T if tb else b)
        blas = timer(lambda x=x, y=y, out=out: np.matmul(x, y, out=out), repeats)
        ours = timer(lambda a=a, b=b, out=out, ta=ta, tb=tb: gemm_cpu.matmul(a, b, out, ta, tb, version), repeats)
        pick = "ours" if ours < blas else "blas"
        entries[key(M, K, N, ta, tb, threads)] = {"blas_ms": round(blas, 4), "ours_ms": round(ours, 4), "pick": pick}
    return entries


def _training_step(Z, hidden, batch):
    """A function table → one cpu-fused training step (forward, backward, Adam) of a VAE
    784 → hidden → 2Z, Z → hidden → 784 on a fixed batch, its products chosen by ``table``."""
    import minivae

    vae = minivae.VAE(784, Z, (hidden,), seed=0, backend="cpu-fused")
    opt, ops = minivae.Adam(vae.params, lr=1e-4), vae.engine.ops
    x = (np.random.default_rng(0).random((batch, 784)) < 0.3).astype(np.float32)

    def step(table):
        ops.gemm_table = table
        vae.forward(x)
        opt.step(vae.backward())

    return step


def step_check(entries, latents, threads, hidden=512, batch=128, repeats=15, timer=_median_ms):
    """Check the picks of ``entries`` where they are used: in whole cpu-fused training steps.

    A product timed alone does not see its neighbours. With several threads our v4 and OpenBLAS
    each keep their own pool of threads, and a step that hands the cores from one pool to the
    other at every product pays for it (measured: a 2-thread step at Z = 20 took 25 ms with two
    small products on ours, 7.6 ms with none). So at each latent size a step with the picks is
    timed against a step on OpenBLAS alone; where the picks make it slower, that size's picks are
    changed to "blas" (with both step times kept in the entry). Returns the entries."""
    from kernels import gemm_cpu

    for Z in latents:
        shapes = {key(*s, threads) for s in gemm_cpu.step_shapes(Z, B=batch, H=hidden)}
        ours = frozenset(k for k in shapes if entries.get(k, {}).get("pick") == "ours")
        if not ours:
            continue
        step = _training_step(Z, hidden, batch)
        with_ours = timer(partial(step, ours), repeats)
        blas_only = timer(partial(step, frozenset()), repeats)
        if with_ours >= blas_only:
            for k in ours:
                entries[k] = dict(entries[k], pick="blas", step_ms={"Z": Z, "ours": with_ours, "blas": blas_only})
    return entries


def save(entries, path=None):
    """Merge ``entries`` into the table at ``path`` (written whole, then renamed into place)."""
    path = pathlib.Path(path) if path is not None else table_path()
    table = {}
    if path.exists():
        try:
            table = json.loads(path.read_text())
        except ValueError:
            table = {}  # an unreadable table is replaced
        if not isinstance(table, dict):
            table = {}
    table.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def main(argv=None):
    from minivae import cli

    ap = cli.Parser(
        prog="python -m kernels.gemm_choice",
        description="Time OpenBLAS and our GEMM on a training step's products; cache the faster per shape.",
    )
    ap.add_argument("--latents", type=cli.widths, default=(20, 1000), help="latent sizes (default 20,1000)")
    ap.add_argument("--hidden", type=cli.positive_int, default=512, help="hidden width (default 512)")
    ap.add_argument("--batch-size", type=cli.positive_int, default=128, help="batch size (default 128)")
    ap.add_argument("--threads", type=cli.positive_int, default=None, help="threads (default: all cores)")
    ap.add_argument("--repeats", type=cli.positive_int, default=30, help="timed calls per product (default 30)")
    args = ap.parse_args(argv)
    import numba
    from threadpoolctl import threadpool_limits

    from kernels import gemm_cpu

    threads = min(args.threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    threadpool_limits(threads)  # OpenBLAS
    numba.set_num_threads(threads)  # ours (v4)
    shapes = sorted({s for z in args.latents for s in gemm_cpu.step_shapes(z, B=args.batch_size, H=args.hidden)})
    entries = step_check(measure(shapes, threads, args.repeats), args.latents, threads, args.hidden, args.batch_size)
    try:
        path = save(entries)
    except OSError as e:
        print(f"{ap.prog}: error: cannot write the choice table: {e}", file=sys.stderr)
        return 1
    print(f"{'product M×K×N ta tb threads':>30} {'OpenBLAS ms':>11} {'ours ms':>8}  pick")
    for k, e in entries.items():
        why = ""
        if "step_ms" in e:
            c = e["step_ms"]
            why = f" (faster alone; a step at Z = {c['Z']} took {c['ours']:.2f} ms with ours, {c['blas']:.2f} without)"
        print(f"{k:>30} {e['blas_ms']:11.3f} {e['ours_ms']:8.3f}  {e['pick']}{why}")
    n = sum(e["pick"] == "ours" for e in entries.values())
    print(f"ours on {n} of {len(entries)} products ({threads} thread(s)); table: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
