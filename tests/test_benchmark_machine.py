"""benchmarks/machine.py: the machine record every benchmark result carries, and its warnings, on
made-up CPU flags, thread pools and timings (nothing is timed here)."""

import pytest

from benchmarks import machine

AVX512_CPU = "processor\t: 0\nmodel name\t: Made-up Xeon\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n"
AVX2_CPU = "processor\t: 0\nmodel name\t: Made-up EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"


def _openblas(architecture, threads=2):
    return {
        "user_api": "blas",
        "internal_api": "openblas",
        "version": "0.3.31",
        "architecture": architecture,
        "num_threads": threads,
        "threading_layer": "pthreads",
        "filepath": "/somewhere/libopenblas.so",
    }


def test_the_record_holds_cpu_isa_blas_and_load():
    rec = machine.record(threads=1, pools=[_openblas("Haswell", 1)], cpuinfo=AVX2_CPU)
    for key in ("cpu_model", "cpu_isa", "cpu_count", "threads", "blas", "threadpools", "env", "load_start", "load_end"):
        assert key in rec
    assert rec["cpu_model"] == "Made-up EPYC" and rec["cpu_isa"] == "AVX2"
    assert rec["cpu_isa_from"] == "/proc/cpuinfo flags"
    (blas,) = rec["blas"]
    assert blas["internal_api"] == "openblas" and blas["architecture"] == "Haswell" and blas["num_threads"] == 1
    assert blas["kernel_isa"] == "AVX2"
    assert rec["warnings"] == []  # Haswell kernels on an AVX2 CPU: nothing below the CPU
    line = machine.summary(rec)
    assert "Made-up EPYC" in line and "AVX2" in line and "openblas 0.3.31 Haswell (AVX2), 1 thread" in line


def test_the_real_machine_record_is_complete():
    """On this machine (whatever it is): every field there, the load a list of three or None."""
    rec = machine.record(threads=1)
    assert rec["cpu_isa"] in ("AVX-512", "AVX2", "AVX", "SSE", "SVE", "NEON", "unknown")
    assert rec["load_start"] is None or len(rec["load_start"]) == 3
    assert all({"internal_api", "architecture", "num_threads"} <= set(b) for b in rec["blas"])


@pytest.mark.parametrize(
    "flags, isa",
    [
        ({"sse2", "avx", "avx2", "avx512f"}, "AVX-512"),
        ({"sse2", "avx", "avx2"}, "AVX2"),
        ({"sse2", "avx"}, "AVX"),
        ({"sse2"}, "SSE"),
        ({"fp", "asimd"}, "NEON"),
        ({"fp", "asimd", "sve"}, "SVE"),
        (set(), "unknown"),
    ],
)
def test_vector_isa_from_flags(flags, isa):
    assert machine.vector_isa(flags) == isa


def test_without_proc_cpuinfo_flags_the_isa_comes_from_elsewhere():
    flags, source = machine.cpu_flags(cpuinfo="")  # no /proc/cpuinfo: LLVM's view, else unknown
    assert source in ("LLVM host features", "unknown")
    assert machine.vector_isa(flags) in ("AVX-512", "AVX2", "AVX", "SSE", "SVE", "NEON", "unknown")


def test_warns_when_the_blas_kernel_is_below_the_cpu(monkeypatch):
    """OpenBLAS on its Haswell (AVX2) kernels on an AVX-512 CPU, as OPENBLAS_CORETYPE=Haswell forces."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    rec = machine.record(threads=2, pools=[_openblas("Haswell")], cpuinfo=AVX512_CPU)
    (w,) = rec["warnings"]
    assert "Haswell" in w and "AVX2" in w and "AVX-512" in w and "OPENBLAS_CORETYPE=Haswell" in w
    assert "\n" not in w


@pytest.mark.parametrize("architecture", ["SkylakeX", "Cooperlake", "Prescott-unknown", None])
def test_no_isa_warning_when_the_kernel_matches_or_is_unknown(architecture):
    rec = machine.record(threads=2, pools=[_openblas(architecture)], cpuinfo=AVX512_CPU)
    assert rec["warnings"] == []


def test_warns_when_the_repeats_spread_too_far():
    rec = machine.record(threads=2, load_start=[0.0, 0.0, 0.0], pools=[], cpuinfo=AVX2_CPU)
    rec["load_end"] = [0.0, 0.0, 0.0]
    quiet = {"floor at Z = 20": machine.spread([1.0, 1.1, 1.05]), "numpy at Z = 20": 1.2}
    assert machine.busy_warnings(rec, quiet) == []
    busy = dict(quiet, **{"cpu-fused at Z = 20": machine.spread([1.0, 1.6, 1.1])})
    (w,) = machine.busy_warnings(rec, busy)
    assert "cpu-fused at Z = 20" in w and "1.60" in w and "busy" in w


def test_warns_when_the_load_is_above_the_free_cores(monkeypatch):
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    rec = machine.record(threads=1, load_start=[2.1, 2.0, 1.5], pools=[], cpuinfo=AVX2_CPU)
    rec["load_end"] = [2.2, 2.0, 1.5]
    (w,) = machine.busy_warnings(rec)
    assert "load average 2.10 2.00 1.50" in w and "1 of 2 cores" in w
    rec["load_start"], rec["load_end"] = [0.3, 0.2, 0.1], [1.4, 0.5, 0.2]  # its own thread: not busy
    assert machine.busy_warnings(rec) == []


def test_finish_records_the_end_load_and_prints_each_warning_in_one_line(capsys):
    rec = machine.record(threads=1, load_start=[0.0, 0.0, 0.0], pools=[], cpuinfo=AVX2_CPU)
    machine.finish(rec, {"floor at Z = 2": 2.0})
    err = capsys.readouterr().err.strip().splitlines()
    assert rec["load_end"] is None or len(rec["load_end"]) == 3
    assert any("floor at Z = 2 spread 2.00×" in line for line in err)
    assert rec["warnings"] == [line for line in err]


STAT = "cpu  1000 20 300 5000 40 5 6 7 0 0\ncpu0 500 10 150 2500 20 2 3 3 0 0\n"


def test_cpu_times_reads_the_busy_ticks_of_proc_stat():
    busy, own, clock = machine.cpu_times(STAT)
    ticks = machine.os.sysconf("SC_CLK_TCK")
    assert busy == pytest.approx((1000 + 20 + 300 + 5 + 6 + 7) / ticks)  # idle and iowait left out
    assert own >= 0 and clock > 0
    assert machine.cpu_times("") is None and machine.cpu_times("intr 1 2 3\n") is None


def test_others_cpu_is_the_busy_time_not_our_own_over_the_wall_time():
    assert machine.others_cpu((100.0, 10.0, 0.0), (103.0, 11.0, 2.0)) == 1.0
    assert machine.others_cpu((100.0, 10.0, 0.0), (101.0, 11.5, 2.0)) == 0.0  # ticks lag: not below 0
    assert machine.others_cpu(None, (1.0, 1.0, 1.0)) is None


def test_a_job_that_ended_before_the_benchmark_is_not_taken_for_a_busy_machine(monkeypatch):
    """The load average trails by a minute: measured CPU use decides where there is one."""
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    rec = machine.record(threads=1, load_start=[1.88, 2.09, 2.09], pools=[], cpuinfo=AVX2_CPU)
    rec["load_end"], rec["others_cpu"] = [0.92, 1.71, 1.95], 0.04
    assert machine.busy_warnings(rec) == []
    rec["others_cpu"] = 1.4  # another job on the core it leaves free, and more
    (w,) = machine.busy_warnings(rec)
    assert "1.40 cores" in w and "1 of 2 cores" in w


def test_finish_measures_the_other_processes_here():
    rec = machine.record(threads=1, pools=[], cpuinfo=AVX2_CPU)
    sum(i * i for i in range(200_000))  # some work of our own, which must not count
    machine.finish(rec)
    assert "_cpu_start" not in rec
    assert rec["others_cpu"] is None or rec["others_cpu"] >= 0
