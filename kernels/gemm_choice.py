"""Which matrix product the cpu-fused backend runs, per shape: OpenBLAS or ours, measured once.

Our CPU GEMM (:mod:`kernels.gemm_cpu`) is faster than OpenBLAS on some shapes of a training step
and slower on others, and which wins depends on the machine and the thread count. So the choice is
not guessed: ``python -m kernels.gemm_choice`` times both on the 11 products of a step at each
latent size asked for, keeps the faster one per shape, then checks those picks in whole training
steps (:func:`step_check`: a pick that makes the step slower is dropped), and writes the result
into a small JSON file (the *choice table*). :class:`kernels.cpu_fused.CpuFusedOps` reads that
file once and, for every product whose shape it lists as ``"ours"``, calls
:func:`kernels.gemm_cpu.matmul` (v3 on one thread, v4 on more; v5 / v6, the same numbers on
512-bit vectors, where the CPU has AVX-512); every other product, and every
product when there is no table, goes to OpenBLAS (``np.matmul``) as before.

A shape is the key ``"M×K×N ta tb threads"``: the product op(a) (M, K) · op(b) (K, N) with the
transpose flags, at the number of Numba/BLAS threads it was timed with. One entry:

    {"blas_ms": 0.41, "ours_ms": 0.47, "pick": "blas"}

The table lives at ``$MINIVAE_GEMM_CHOICE`` when that is set, else in
``~/.cache/minivae/gemm-choice.json``. Both products compute the same sums in a different order,
so a model trained with one table and resumed with another (or with none) continues from the
same state but does not reproduce the uninterrupted run bit for bit; keep the table while a run
is resumed. A table that cannot be read is ignored with one warning (OpenBLAS everywhere). The table is
written whole or not at all (a temporary file beside it, renamed into place; removed when the
write fails); where it could not be written, or the products would not fit in memory, the command
says so in one line (exit code 2) before it times anything.

    python -m kernels.gemm_choice [--latents 20,1000] [--threads 1] [--repeats 30]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
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
    from minivae.files import parse_json, read_regular_text

    path = pathlib.Path(path) if path is not None else table_path()
    try:
        table = parse_json(read_regular_text(path))
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
    """Time OpenBLAS and our GEMM (:func:`kernels.gemm_cpu.best_version`: v3 on one thread, v4 on
    more; v5 and v6 where the CPU has AVX-512) on each (M, K, N, ta, tb) of
    ``shapes`` with the current thread count ``threads``, alternating the two; returns the table's
    entries {key: {"blas_ms", "ours_ms", "pick"}}. Each of ours is first checked against the
    float64 product (a wrong kernel is never picked). ``timer(fn, repeats)`` gives milliseconds."""
    from kernels import gemm_cpu

    rng = np.random.default_rng(seed)
    version = gemm_cpu.best_version(threads)
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
    """Merge ``entries`` into the table at ``path``: written whole to a temporary file beside it,
    then renamed into place; a failed write (a full disk, Ctrl-C) removes the temporary file and
    leaves the old table as it was."""
    from minivae.files import atomic_write_text, parse_json, read_regular_text

    path = pathlib.Path(path) if path is not None else table_path()
    table = {}
    if path.exists():
        try:
            table = parse_json(read_regular_text(path))
        except (OSError, ValueError):
            table = {}  # an unreadable table (or a FIFO, a device) is replaced
        if not isinstance(table, dict):
            table = {}
    table.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(table, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    try:  # what a failed write of an earlier version left: a temporary file of a fixed name
        path.with_name(path.name + ".tmp").unlink()
    except OSError:
        pass
    return path


def memory_needed(latents, hidden, batch):
    """Bytes the command needs at its peak, roughly (an upper estimate): the largest product's
    float32 operands and output with their float64 copies and reference (its check), or the
    largest training step of :func:`step_check` — a VAE's parameters, gradients and Adam moments
    and a step's activations — whichever is more."""
    from kernels import gemm_cpu

    shapes = [s for z in latents for s in gemm_cpu.step_shapes(z, B=batch, H=hidden)]
    products = max(12 * (M * K + K * N) + 12 * M * N for M, K, N, _, _ in shapes)
    params = max(784 * hidden + hidden * 2 * z + z * hidden + hidden * 784 for z in latents)
    activations = max(batch * (2 * hidden + 3 * z + 2 * 784) for z in latents)
    steps = 4 * 4 * params + 3 * 4 * activations
    return max(products, steps)


def _check_table_path(path):
    """Refuse, before anything is timed, a table that could not be written at the end."""
    from minivae.cli import UsageError

    try:
        if path.is_dir():
            raise UsageError(f"the choice table {path} is a folder (set {ENV} to a file)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"cannot write the choice table {path}: {e.strerror or e}") from None


def parse_args(argv=None):
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
    return ap.parse_args(argv)


def run(args):
    """Check the table's path and the memory, time, check in steps, save, print. Returns the exit code."""
    from minivae import cli

    path = table_path()
    _check_table_path(path)
    cli.check_memory(
        memory_needed(args.latents, args.hidden, args.batch_size),
        f"timing the products of hidden {args.hidden}, batch {args.batch_size}, Z = {','.join(map(str, args.latents))}",
    )
    import numba
    from threadpoolctl import threadpool_limits

    from kernels import gemm_cpu

    threads = min(args.threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    threadpool_limits(threads)  # OpenBLAS
    numba.set_num_threads(threads)  # ours (v4)
    shapes = sorted({s for z in args.latents for s in gemm_cpu.step_shapes(z, B=args.batch_size, H=args.hidden)})
    try:
        entries = step_check(
            measure(shapes, threads, args.repeats), args.latents, threads, args.hidden, args.batch_size
        )
    except MemoryError:
        print(f"{PROG}: out of memory while timing the products; no table written", file=sys.stderr)
        return cli.EXIT_FAILED
    try:
        path = save(entries, path)
    except OSError as e:
        print(f"{PROG}: {e}; the table is as it was", file=sys.stderr)
        return cli.EXIT_FAILED
    lines = [f"{'product M×K×N ta tb threads':>30} {'OpenBLAS ms':>11} {'ours ms':>8}  pick"]
    for k, e in entries.items():
        why = ""
        if "step_ms" in e:
            c = e["step_ms"]
            why = f" (faster alone; a step at Z = {c['Z']} took {c['ours']:.2f} ms with ours, {c['blas']:.2f} without)"
        lines.append(f"{k:>30} {e['blas_ms']:11.3f} {e['ours_ms']:8.3f}  {e['pick']}{why}")
    n = sum(e["pick"] == "ours" for e in entries.values())
    lines.append(f"ours on {n} of {len(entries)} products ({threads} thread(s)); table: {path}")
    cli.say(*lines)
    return 0


PROG = "kernels.gemm_choice"


def main(argv=None):
    from minivae import cli

    return cli.run_command(PROG, run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
