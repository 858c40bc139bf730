"""The machine a benchmark ran on: what every benchmark result records and prints.

A benchmark's numbers say as much about the machine as about the code, so each result carries a
description of it (:func:`record`), printed in one line (:func:`summary`):

    cpu_model      the CPU's model name (/proc/cpuinfo, else the platform's word for it)
    cpu_isa        its widest vector instruction set: AVX-512 (avx512f), AVX2, AVX, SSE, SVE,
                   NEON, from the CPU flags of /proc/cpuinfo, else from LLVM's view of the host
                   (llvmlite, which comes with Numba), else "unknown"; ``cpu_isa_from`` says which
    cpu_count      the cores the operating system shows
    threads        the threads the benchmark itself runs on
    blas           each BLAS library loaded (threadpoolctl's ``threadpool_info()``): its
                   ``internal_api`` (openblas, mkl, blis), ``version``, ``architecture`` (the kernel
                   or core type it chose, e.g. OpenBLAS's Haswell or SkylakeX), ``num_threads``,
                   and ``kernel_isa``, the instruction set of that kernel where it is known
    threadpools    every thread pool threadpoolctl sees (BLAS and OpenMP), as before
    env            the environment variables that steer threads and kernels (OPENBLAS_CORETYPE, …)
    load_start     os.getloadavg() (1, 5 and 15 minutes) when the benchmark started,
    load_end       and when it ended (None where the platform has no load average)
    others_cpu     the cores other processes kept busy, on average, from :func:`start` to
                   :func:`finish`: all CPUs' busy time (/proc/stat) less this process's own and
                   its finished children's (os.times()), over the wall time (None where there is
                   no /proc/stat)
    warnings       the warnings below, as printed

Two kinds of warning, each one line on stderr (:func:`warn`), say when the numbers are not the
machine's best:

- the BLAS kernel is below the CPU (:func:`isa_warning`): OpenBLAS running its Haswell (AVX2)
  kernels on a CPU with AVX-512, as ``OPENBLAS_CORETYPE=Haswell`` forces, runs at about half its
  speed;
- the machine was busy (:func:`busy_warnings`): the repeats of one measurement spread by more than
  :data:`SPREAD_LIMIT` (slowest over fastest), or other processes used more than the cores the
  benchmark leaves free (``others_cpu``, by more than :data:`OTHERS_SLACK`). Where there is no
  /proc/stat the load average stands in (by more than :data:`LOAD_SLACK`: an idle machine's load
  is rarely 0); it trails the machine by a minute or more, so a job that ended just before the
  benchmark still counts in it, which is why it is only the fallback.

Only the standard library is imported here (threadpoolctl, NumPy and llvmlite when asked, each
optional), so that the GPU check can describe a machine on which nothing is installed yet.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
import time

SPREAD_LIMIT = 1.3  # slowest repeat over fastest above this: something else ran meanwhile
LOAD_SLACK = 0.5  # load average allowed above the free cores before the machine counts as busy
OTHERS_SLACK = 0.25  # cores other processes may use above the free ones before the machine counts as busy

# Widest first: the rank of each instruction set (only x86 ranks are compared).
ISA_RANK = {"SSE": 1, "AVX": 2, "AVX2": 3, "AVX-512": 4}

# The instruction set of a BLAS kernel, by the ``architecture`` threadpoolctl reports (OpenBLAS's
# core names, BLIS's configuration names), lower case. A name not listed gives no warning.
KERNEL_ISA = {
    **dict.fromkeys(("skylakex", "cooperlake", "sapphirerapids", "skx", "knl", "zen4", "zen5"), "AVX-512"),
    **dict.fromkeys(("haswell", "zen", "zen2", "zen3"), "AVX2"),
    **dict.fromkeys(("sandybridge", "bulldozer", "piledriver", "steamroller"), "AVX"),
    **dict.fromkeys(("nehalem", "core2", "penryn", "dunnington", "atom", "prescott", "barcelona", "opteron"), "SSE"),
}

POOL_KEYS = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
ENV_KEYS = ("BLAS", "OMP_", "MKL", "NUMBA", "CORETYPE", "TF32", "XLA")  # the variables recorded in ``env``


# --------------------------------------------------------------------------------------------
# The CPU
# --------------------------------------------------------------------------------------------


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model(cpuinfo=None):
    """The CPU's model name: /proc/cpuinfo's first ``model name``, else the platform's word."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith(("model name", "Model")) and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo=None):
    """(set of CPU flags, where they came from): /proc/cpuinfo's ``flags`` (x86) or ``Features``
    (Arm), else LLVM's host features through llvmlite, else (empty set, "unknown")."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return set(line.split(":", 1)[1].split()), "/proc/cpuinfo flags"
    try:
        from llvmlite import binding

        features = binding.get_host_cpu_features()
        return {name for name, on in features.items() if on}, "LLVM host features"
    except Exception:  # noqa: BLE001 - no llvmlite, or one that cannot ask: say unknown
        return set(), "unknown"


def vector_isa(flags):
    """The widest vector instruction set among ``flags``: AVX-512, AVX2, AVX, SSE, SVE, NEON or
    "unknown"."""
    for flag, isa in (
        ("avx512f", "AVX-512"),
        ("avx2", "AVX2"),
        ("avx", "AVX"),
        ("sse2", "SSE"),
        ("sve", "SVE"),
        ("asimd", "NEON"),
        ("neon", "NEON"),
    ):
        if flag in flags:
            return isa
    return "unknown"


# --------------------------------------------------------------------------------------------
# BLAS and load
# --------------------------------------------------------------------------------------------


def threadpools():
    """threadpoolctl's ``threadpool_info()`` after NumPy is loaded (its BLAS appears only then);
    [] without threadpoolctl or NumPy."""
    try:
        import numpy  # noqa: F401 - loads NumPy's BLAS, so that threadpoolctl sees it
        from threadpoolctl import threadpool_info

        return threadpool_info()
    except ImportError:
        return []


def blas_entries(pools):
    """The BLAS libraries among ``pools`` (dicts as threadpool_info gives them), each with the
    instruction set of its kernel (``kernel_isa``, None where the architecture is not known)."""
    out = []
    for p in pools:
        if p.get("user_api") == "blas":
            entry = {k: p.get(k) for k in POOL_KEYS[1:]}
            entry["kernel_isa"] = KERNEL_ISA.get(str(p.get("architecture") or "").lower())
            out.append(entry)
    return out


def blas_threads():
    """The threads of NumPy's BLAS (the first one seen), else the core count."""
    blas = blas_entries(threadpools())
    return blas[0]["num_threads"] if blas else os.cpu_count()


def home_as_tilde(path):
    """``path`` with the home folder written ``~``, so that a result names no one's folder."""
    try:
        return str(pathlib.Path("~") / pathlib.Path(path).relative_to(pathlib.Path.home()))
    except ValueError:  # not under the home folder
        return str(path)


def load():
    """os.getloadavg() rounded, as a list (1, 5, 15 minutes); None where there is none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_times(stat=None):
    """(seconds all CPUs were busy since boot, seconds this process and its finished children
    have run, a monotonic clock): busy is /proc/stat's first ``cpu`` line less its idle and
    iowait columns. None where there is no /proc/stat. ``stat``: its text, for tests."""
    if stat is None:
        try:
            with open("/proc/stat") as f:
                stat = f.read()
        except OSError:
            return None
    fields = stat.splitlines()[0].split() if stat.strip() else []
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    own = sum(os.times()[:4])  # user and system time, of this process and of its waited children
    return busy / os.sysconf("SC_CLK_TCK"), own, time.monotonic()


def others_cpu(start, end):
    """The cores other processes kept busy on average between two :func:`cpu_times`, rounded
    (not below 0: the counters tick at 1/100 s); None where either is None or no time passed."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    used = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(used, 0.0) / (end[2] - start[2]), 2)


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


def record(threads, load_start=None, pools=None, cpuinfo=None):
    """The machine record of a benchmark on ``threads`` threads (see the module docstring), taken
    now, after the benchmark has set its thread counts. ``load_start``: the load average taken when
    the benchmark started (:func:`load`; now, when not given). ``pools`` (threadpool_info's list)
    and ``cpuinfo`` (the text of /proc/cpuinfo) replace what this machine says, for tests."""
    pools = threadpools() if pools is None else pools
    flags, source = cpu_flags(cpuinfo)
    rec = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(cpuinfo),
        "cpu_isa": vector_isa(flags),
        "cpu_isa_from": source,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "blas": blas_entries(pools),
        "threadpools": [{k: p.get(k) for k in POOL_KEYS} for p in pools],
        "env": {k: v for k, v in os.environ.items() if any(s in k for s in ENV_KEYS)},
        "load_start": load() if load_start is None else load_start,
        "load_end": None,
        "others_cpu": None,
        "warnings": [],
        "_cpu_start": cpu_times(),  # taken out by finish()
    }
    rec["warnings"] = [w for w in [isa_warning(rec)] if w]
    return rec


def blas_text(entry):
    """One BLAS entry in words: ``openblas 0.3.31 Haswell (AVX2), 1 thread``."""
    kernel = entry.get("architecture") or "kernel unknown"
    isa = f" ({entry['kernel_isa']})" if entry.get("kernel_isa") else ""
    n = entry.get("num_threads")
    return f"{entry.get('internal_api')} {entry.get('version')} {kernel}{isa}, {n} thread{'' if n == 1 else 's'}"


def _load_text(values):
    return "unknown" if not values else " ".join(f"{x:.2f}" for x in values)


def summary(rec):
    """The record in one line, for the start of a benchmark's output."""
    blas = "; ".join(blas_text(e) for e in rec["blas"]) or "no BLAS seen"
    return (
        f"machine: {rec['cpu_model']} ({rec['cpu_count']} cores, {rec['cpu_isa']}); BLAS: {blas}; "
        f"load average {_load_text(rec['load_start'])}"
    )


# --------------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------------


def isa_warning(rec):
    """A warning when a BLAS library runs kernels of a narrower instruction set than the CPU
    has (both known and x86), else None."""
    cpu = ISA_RANK.get(rec.get("cpu_isa"))
    for e in rec.get("blas", []):
        kernel = ISA_RANK.get(e.get("kernel_isa"))
        if cpu is not None and kernel is not None and kernel < cpu:
            forced = os.environ.get("OPENBLAS_CORETYPE")
            why = f" (OPENBLAS_CORETYPE={forced})" if forced and e.get("internal_api") == "openblas" else ""
            return (
                f"warning: {e.get('internal_api')} runs {e.get('architecture')} kernels ({e['kernel_isa']}) "
                f"on a {rec['cpu_isa']} CPU{why}: its products run below this machine's speed"
            )
    return None


def spread(times):
    """Slowest over fastest of a measurement's repeats (1.0 for fewer than two)."""
    times = [t for t in times if t > 0]
    return max(times) / min(times) if len(times) > 1 else 1.0


def busy_warnings(rec, spreads=None):
    """Warnings that the machine was busy: the widest spread among ``spreads`` ({what: slowest
    over fastest repeat}) when it is above :data:`SPREAD_LIMIT`, and ``others_cpu`` above the
    cores it leaves free; where that is None, a load average (1 minute, at the start, or at the
    end less the benchmark's own threads) above them."""
    out = []
    if spreads:
        what, worst = max(spreads.items(), key=lambda kv: kv[1])
        if worst > SPREAD_LIMIT:
            out.append(
                f"warning: the machine was busy: the repeats of {what} spread {worst:.2f}× "
                f"(slowest over fastest; above {SPREAD_LIMIT} something else was running)"
            )
    cores, threads = rec.get("cpu_count") or 1, rec.get("threads") or 1
    free = max(cores - threads, 0)
    threads_text = f"{threads} thread{'' if threads == 1 else 's'}"
    if rec.get("others_cpu") is not None:
        if rec["others_cpu"] > free + OTHERS_SLACK:
            out.append(
                f"warning: the machine was busy: other processes kept {rec['others_cpu']:.2f} cores busy "
                f"on average while it ran, above the {free} of {cores} cores this benchmark leaves free "
                f"({threads_text})"
            )
        return out
    start, end = rec.get("load_start"), rec.get("load_end")
    others = max([start[0]] * bool(start) + [end[0] - threads] * bool(end), default=None)
    if others is not None and others > free + LOAD_SLACK:
        out.append(
            f"warning: the machine was busy: load average {_load_text(start)} at the start, "
            f"{_load_text(end)} at the end, above the {free} of {cores} cores this benchmark "
            f"leaves free ({threads_text})"
        )
    return out


def start(threads, load_start=None):
    """:func:`record`, printed: its summary on stdout, its warning (the BLAS kernel) on stderr."""
    rec = record(threads, load_start)
    print(summary(rec), flush=True)
    warn(rec["warnings"])
    return rec


def finish(rec, spreads=None):
    """Complete ``rec`` at the end of the benchmark: the load average now, and the warnings that
    the machine was busy, each printed as one line on stderr. Returns ``rec``."""
    rec["load_end"] = load()
    rec["others_cpu"] = others_cpu(rec.pop("_cpu_start", None), cpu_times())
    busy = busy_warnings(rec, spreads)
    rec["warnings"] += busy
    used = "unknown" if rec["others_cpu"] is None else f"{rec['others_cpu']:.2f}"
    print(f"load average at the end: {_load_text(rec['load_end'])}; other processes' cores: {used}", flush=True)
    warn(busy)
    return rec


def warn(lines):
    for line in lines:
        print(line, file=sys.stderr, flush=True)
