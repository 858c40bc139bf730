"""The sweep's guards of its output folder, each tried the way it can fail.

1. one sweep at a time: a locked folder is refused in one line, also between two real processes;
2. the workers of a sweep killed by SIGKILL end, and the folder is free again;
3. a lock file that is a link (or not a regular file) is refused and never written through;
4. rows that workers left in runs/*.row.json are taken in by the next sweep, not trained again;
5. a resume checkpoint with a broken progress record is set aside, and the run starts over;
6. a second row of one run in results.jsonl is set aside, not counted as another seed;
7. a row without an importance-weighted likelihood still gets its report;
8. a --limit too small for the probes is refused before anything is trained.
"""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_faults import SWEEP, fake_execute, one_line
from test_sweep import _interrupt_after

from minivae import guards, study, sweep
from minivae.cli import UsageError
from minivae.config import SweepRun

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache

LONG = SWEEP[:2] + ["--steps", "100000"] + SWEEP[4:]  # SWEEP's options, a run that outlasts the test


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Tiny products, on a machine that may be busy: one BLAS thread is much faster."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A one-run study made by a real sweep: (its folder, its results row)."""
    out = tmp_path_factory.mktemp("guard") / "study"
    with pytest.MonkeyPatch.context() as mp:
        from minivae import plots

        mp.setenv("MINIVAE_DATA", str(out.parent / "cache"))
        mp.setenv("MINIVAE_MIRRORS", "http://127.0.0.1:9/")
        mp.setattr(plots, "study_figures", lambda *a, **k: None)
        assert sweep.main(SWEEP + ["--out", str(out)]) == 0
    return out, json.loads((out / "results.jsonl").read_text())


@pytest.fixture
def study_copy(made, tmp_path, monkeypatch):
    """A copy of the made study to change, its figures left out (they are not what is tested)."""
    from minivae import plots

    monkeypatch.setattr(plots, "study_figures", lambda *a, **k: None)
    return pathlib.Path(shutil.copytree(made[0], tmp_path / "study")), made[1]


def _start(out, *extra):
    """A real sweep in its own process (training for longer than any test waits); its stderr goes
    to sweep.err beside ``out`` (a file, not a pipe: its workers inherit it)."""
    with open(out.parent / "sweep.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "minivae.sweep", *LONG, *extra, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"),
        )


def _wait_for_runs(proc, out, n, seconds=90):
    """Until ``n`` runs of the sweep ``proc`` are under way (their progress files exist)."""
    deadline = time.monotonic() + seconds
    while len(list((out / "runs").glob("*.partial.json")) if (out / "runs").is_dir() else []) < n:
        assert proc.poll() is None, (out.parent / "sweep.err").read_text()
        assert time.monotonic() < deadline, "the sweep's runs did not start"
        time.sleep(0.1)


def _alive(pid):
    """Whether process ``pid`` still runs (a zombie, ended but not reaped, does not)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@contextlib.contextmanager
def _within(seconds):
    """Fail, instead of hanging, when the block is not done in ``seconds``."""

    def late(signum, frame):
        raise AssertionError(f"not done after {seconds} s")

    old = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _children(pid):
    """The process ids of the children of process ``pid`` (those of every thread of it)."""
    found = set()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


# --------------------------------------------------------------------------------------------
# 1. One sweep at a time
# --------------------------------------------------------------------------------------------


def test_a_sweep_into_a_locked_folder_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    out.mkdir()
    execute, done = fake_execute({})
    monkeypatch.setattr(sweep, "_execute", execute)
    with guards.FolderLock(out, "--out", "sweep"):
        assert sweep.main(SWEEP + ["--out", str(out)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"another sweep (process {os.getpid()}) is writing into {out}" in line
        assert [p.name for p in out.iterdir()] == [".lock"]  # not even the workers' lock file
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"  # the holder's, untouched
    assert done == []


def test_two_sweeps_into_one_folder_at_once_the_second_is_refused_at_once(tmp_path):
    out = tmp_path / "study"
    first = _start(out)
    try:
        _wait_for_runs(first, out, 1)
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "minivae.sweep", *LONG, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        waited = time.monotonic() - t0
        assert second.returncode == 2, second.stderr
        assert f"another sweep (process {first.pid}) is writing into {out}" in one_line(second.stderr)
        assert waited < 20  # no data loaded, no worker started: refused at once
        assert first.poll() is None  # the first goes on
        assert (out / ".lock").read_text() == f"{first.pid}\n"  # the first's lock, untouched
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)  # its worker gets up to 30 s to clean up
    assert first.returncode == 130, (tmp_path / "sweep.err").read_text()


# --------------------------------------------------------------------------------------------
# 2. Workers end with their sweep, even when it is killed
# --------------------------------------------------------------------------------------------


def test_the_workers_of_a_sweep_killed_by_sigkill_end_and_a_new_sweep_runs(tmp_path, monkeypatch):
    out = tmp_path / "study"
    proc = _start(out, "--latents", "2,3", "--jobs", "2")
    workers = set()
    try:
        _wait_for_runs(proc, out, 2)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # the two workers (and multiprocessing's resource tracker)
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, [pid for pid in workers if _alive(pid)]
            time.sleep(0.2)
    finally:
        for pid in [proc.pid, *workers]:  # whatever this test started and is still there
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    # Each worker cleaned up as it ended: no progress file says its run is still going, no
    # temporary file is left; a run past 2,000 steps keeps its checkpoint to continue from.
    assert all(p.name.endswith(".resume.npz") for p in (out / "runs").iterdir())
    from minivae import plots

    monkeypatch.setattr(plots, "study_figures", lambda *a, **k: None)
    assert sweep.main(SWEEP + ["--out", str(out)]) == 0  # the folder is free: --steps 4, other settings
    (row,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert row["steps"] == 4


# --------------------------------------------------------------------------------------------
# 3. A lock file that is not one
# --------------------------------------------------------------------------------------------


def test_a_lock_file_that_is_a_link_is_refused_and_never_written_through(tmp_path, capsys):
    out, target = tmp_path / "study", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me\n")
    (out / ".lock").symlink_to(target)
    with _within(10):  # a lock that followed the link would spin on a file that is not its own
        assert sweep.main(SWEEP + ["--out", str(out)]) == 2
        assert "is a symbolic link" in one_line(capsys.readouterr().err)
        assert target.read_text() == "keep me\n"
        assert [p.name for p in out.iterdir()] == [".lock"] and (out / ".lock").is_symlink()
        # The same lock guards minivae.train's run folders: a dangling link is not followed to make
        # its target, and a FIFO (not a regular file) is refused too.
        with pytest.raises(UsageError, match="is a symbolic link"):
            guards.FolderLock(out).acquire()
        assert target.read_text() == "keep me\n"
        (out / ".lock").unlink()
        (out / ".lock").symlink_to(tmp_path / "nowhere")
        with pytest.raises(UsageError, match="is a symbolic link"):
            guards.FolderLock(out).acquire()
        assert not (tmp_path / "nowhere").exists()
        (out / ".lock").unlink()
        os.mkfifo(out / ".lock")
        with pytest.raises(UsageError, match="is not a regular file"):
            guards.FolderLock(out).acquire()


# --------------------------------------------------------------------------------------------
# 4. Rows left by the workers of a killed sweep
# --------------------------------------------------------------------------------------------


def test_rows_left_in_row_files_are_taken_in_and_not_trained_again(study_copy, monkeypatch, capsys):
    out, row = study_copy
    (out / "results.jsonl").unlink()  # the sweep died before it could take the row in
    left = out / "runs" / study.run_file(row, ".row.json")
    left.write_text(json.dumps(row) + "\n")
    execute, done = fake_execute(row)
    monkeypatch.setattr(sweep, "_execute", execute)
    assert sweep.main(SWEEP + ["--out", str(out)]) == 0
    assert done == []  # nothing trained
    assert [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] == [row]
    assert not left.exists()
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 5. A resume checkpoint whose progress record is broken
# --------------------------------------------------------------------------------------------


def _run_cfg(out):
    """The run a worker gets for one VAE run of 8 steps (Z = 3, hidden 8, 256 digits, no probes)."""
    args = sweep.parse_args(["--latents", "3", "--limit", "256", "--steps", "8"] + SWEEP[6:] + ["--out", str(out)])
    settings, key = sweep.settings_of(args, 8)
    cfg = dict(settings, model="vae", latent=3, hidden=[8], seed=0, out=str(out), settings=key)
    return SweepRun(**cfg, backend="numpy", probe=False)  # the probes are not what is compared


@pytest.mark.parametrize(
    "change, said",
    [
        ({"curve": "not a curve"}, "learning curve is not a list"),
        ({"step": 4}, "position"),  # the arrays are at step 3
        ({"step": 10**9}, "position"),
        ({"step": -1}, "not a count"),
    ],
)
def test_a_checkpoint_with_a_broken_progress_record_is_set_aside_and_the_run_starts_over(
    change, said, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(sweep, "RESUME_EVERY", 3)
    fresh = sweep.run_one(_run_cfg(tmp_path / "fresh"))
    cfg = _run_cfg(tmp_path / "cut")
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)  # saved at step 3
        with pytest.raises(KeyboardInterrupt):
            sweep.run_one(cfg)
    resume = tmp_path / "cut" / "runs" / cfg.file(".resume.npz")
    with np.load(resume) as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(str(arrays["config"]))
    assert config["done"]["step"] == 3
    config["done"].update(change)
    arrays["config"] = np.array(json.dumps(config))
    with open(resume, "wb") as f:
        np.savez(f, **arrays)
    capsys.readouterr()
    row = sweep.run_one(cfg)
    line = one_line(capsys.readouterr().err)
    assert "cannot continue from it" in line and said in line and "starts again" in line, line
    assert resume.with_name(resume.name + ".corrupt").exists() and not resume.exists()
    assert row["curve"] == fresh["curve"] and row["test_loss"] == fresh["test_loss"]


# --------------------------------------------------------------------------------------------
# 6. One run, one row
# --------------------------------------------------------------------------------------------


def test_a_second_row_of_one_run_is_set_aside_not_counted_as_a_seed(study_copy, monkeypatch, capsys):
    out, row = study_copy
    line = json.dumps(row) + "\n"
    (out / "results.jsonl").write_text(line + line)
    execute, done = fake_execute(row)
    monkeypatch.setattr(sweep, "_execute", execute)
    assert sweep.main(SWEEP + ["--out", str(out)]) == 0
    assert "a second row of vae Z=2 seed 0; set aside" in one_line(capsys.readouterr().err)
    assert done == []
    assert [json.loads(x) for x in (out / "results.jsonl.corrupt").read_text().splitlines()] == [row]
    assert "| vae | 8 | 2 | 1 |" in (out / "report.md").read_text()  # n = 1
    # Set aside means moved: results.jsonl holds the row once, and the next sweep has nothing to say.
    assert [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()] == [row]
    assert sweep.main(SWEEP + ["--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert len((out / "results.jsonl.corrupt").read_text().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# 7. A row without the importance-weighted likelihood
# --------------------------------------------------------------------------------------------


def test_a_row_without_test_iw_nll_gets_a_report(study_copy, monkeypatch, capsys):
    out, row = study_copy
    rows = [dict(row, latent=z) for z in (2, 3)]
    for r in rows:
        del r["test_iw_nll"]
        assert sweep._row_problem(r) is None
    settings = json.loads((out / "settings.json").read_text())
    text = study.report(rows, settings, row["data"])
    assert "| vae | 8 | 3 | 1 |" in text and "Best test −ELBO" in text
    # and through the sweep, from results.jsonl
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    execute, done = fake_execute(row)
    monkeypatch.setattr(sweep, "_execute", execute)
    assert sweep.main(SWEEP[:1] + ["2,3"] + SWEEP[2:] + ["--out", str(out)]) == 0
    assert done == [] and "Traceback" not in capsys.readouterr().err
    assert "| vae | 8 | 3 | 1 |" in (out / "report.md").read_text()


# --------------------------------------------------------------------------------------------
# 8. Too few digits for the probes
# --------------------------------------------------------------------------------------------


def test_a_limit_below_ten_is_one_line_and_exit_2_before_anything_is_trained(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    called = []
    monkeypatch.setattr(sweep, "_execute", lambda *a: called.append(a) or iter(()))
    args = SWEEP + ["--out", str(out)]
    args[args.index("--limit") + 1] = "4"
    assert sweep.main(args) == 2
    assert "--limit 4" in one_line(capsys.readouterr().err)
    assert called == [] and not out.exists()
