"""Which matrix product the cpu-fused backend runs, per shape: OpenBLAS or ours, measured once.

Our CPU GEMM (:mod:`kernels.gemm_cpu`) is faster than OpenBLAS on some shapes of a training step
and slower on others, and which wins depends on the machine and the thread count. So the choice is
not guessed: ``python -m kernels.gemm_choice`` times both on the 11 products of a step at each
latent size asked for, and writes the faster one per shape into a small JSON file (the *choice
table*). :class:`kernels.cpu_fused.CpuFusedOps` reads that file once and, for every product whose
shape it lists as ``"ours"``, calls :func:`kernels.gemm_cpu.matmul` (v3 on one thread, v4 on
more); every other product, and every product when there is no table, goes to OpenBLAS
(``np.matmul``) as before.

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
    entries = measure(shapes, threads, args.repeats)
    try:
        path = save(entries)
    except OSError as e:
        print(f"{ap.prog}: error: cannot write the choice table: {e}", file=sys.stderr)
        return 1
    print(f"{'product M×K×N ta tb threads':>30} {'OpenBLAS ms':>11} {'ours ms':>8}  pick")
    for k, e in entries.items():
        print(f"{k:>30} {e['blas_ms']:11.3f} {e['ours_ms']:8.3f}  {e['pick']}")
    n = sum(e["pick"] == "ours" for e in entries.values())
    print(f"ours on {n} of {len(entries)} products ({threads} thread(s)); table: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
