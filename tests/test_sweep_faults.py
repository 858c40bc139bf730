"""Bad input to the sweep, refused in one line with exit code 2 before anything is trained or written.

1. a refusal after the output folder is locked (no data, an unreachable scheduler) leaves no lock
   file and no folder it made behind;
2. runs that would each fail: a GPU backend without a GPU, a size that cannot fit in memory, an
   --init-from whose checkpoint does not match its config, a rate beyond float32; and a run whose
   loss diverged so far that its model cannot be measured says so, and how to train it again;
3. --epochs 0, like --steps 0;
4. a mini-batch larger than the training digits;
5. a results.jsonl row whose settings key is not a string (and such a row file of a worker).
"""

import json

import numpy as np
import pytest
from test_faults import SWEEP, one_line
from test_sweep_guard import _run_cfg

from minivae import sweep

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tiny products, on a machine that may be busy: one BLAS thread is much faster."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture
def trained(monkeypatch):
    """No worker: the runs the sweep hands out are recorded, and 'finish' without a row."""
    called = []
    monkeypatch.setattr(sweep, "_execute", lambda todo, jobs, client: called.extend(todo) or iter(()))
    return called


def _refused(argv, capsys, trained):
    """The sweep of ``argv``: exit 2 and its one line, nothing handed to a worker."""
    assert sweep.main(argv) == 2
    assert trained == []
    return one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# 1. Nothing left behind by a refusal that comes after the lock
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [False, True])
@pytest.mark.parametrize("bad", ["data", "scheduler"])
def test_a_refusal_after_the_lock_leaves_no_lock_and_no_folder(bad, exists, tmp_path, capsys, trained):
    out = tmp_path / "new" / "study"
    if exists:
        out.mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    extra = ["--data-dir", str(tmp_path / "empty")] if bad == "data" else ["--scheduler", "notaurl"]
    line = _refused(SWEEP + extra + ["--out", str(out)], capsys, trained)
    assert ("lacks the MNIST" in line) if bad == "data" else ("--scheduler" in line or "Dask" in line), line
    if exists:
        assert list(out.iterdir()) == []  # no .lock, no .workers.lock
    else:
        assert not (tmp_path / "new").exists()  # the folders it made are gone again


def test_names_the_system_cannot_look_up_are_one_line(tmp_path, capsys, trained):
    """A --data-dir or --out whose name is too long for the file system (pathlib raises it)."""
    too_long = tmp_path / ("x" * 300)
    (tmp_path / "file").write_text("x")
    for extra, says in (
        (["--data-dir", str(too_long), "--out", str(tmp_path / "o")], "--data-dir"),
        (["--out", str(too_long)], "--out"),
        (["--out", str(tmp_path / "file")], "exists and is not a folder"),
    ):
        line = _refused(SWEEP + extra, capsys, trained)
        assert says in line and ("File name too long" in line or "file" in extra[-1]), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --------------------------------------------------------------------------------------------
# 2. Runs that would each fail
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cupy", "numba-cuda"])
def test_a_gpu_backend_without_a_usable_gpu_is_refused(backend, tmp_path, capsys, trained):
    from minivae.backend import gpu_usable

    if gpu_usable(backend, simulator=backend == "numba-cuda")[0]:
        pytest.skip(f"{backend} can use a GPU here")
    argv = SWEEP[: SWEEP.index("--backend")] + ["--backend", backend, "--quiet", "--out", str(tmp_path / "s")]
    line = _refused(argv, capsys, trained)
    assert f"--backend {backend} needs a usable CUDA GPU" in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "option, value",
    [("--latents", "100000000"), ("--hidden", "10000000"), ("--iw-samples", "10" * 5), ("--iw-check", "10" * 5)],
)
def test_a_run_too_large_for_the_memory_is_refused(option, value, tmp_path, capsys, trained):
    line = _refused(SWEEP + [option, value, "--out", str(tmp_path / "s")], capsys, trained)  # the last value counts
    assert "needs about" in line and "of memory, more than the" in line, line
    assert not (tmp_path / "s").exists()


def test_an_init_from_whose_checkpoint_does_not_match_its_config_is_refused(tmp_path, capsys, trained):
    from minivae import checkpoint
    from minivae.config import RunConfig
    from minivae.vae import VAE

    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig(latent=2, hidden=(8,), backend="numpy").to_json()
    (run / "config.json").write_text(json.dumps(config))
    checkpoint.save_params(run / "checkpoint.npz", VAE(784, 2, (16,), seed=0, backend="numpy"), config)
    line = _refused(SWEEP + ["--init-from", str(run), "--out", str(tmp_path / "s")], capsys, trained)
    assert "--init-from" in line and "does not match" in line, line
    assert not (tmp_path / "s").exists()


def test_a_rate_beyond_float32_is_refused(tmp_path, capsys, trained):
    line = _refused(SWEEP + ["--lr", "1e300", "--out", str(tmp_path / "s")], capsys, trained)
    assert "--lr 1e300" in line and "float32" in line
    assert not (tmp_path / "s").exists()


def test_a_run_that_diverged_beyond_measuring_says_so_and_the_rate_to_try(tmp_path):
    cfg = _run_cfg(tmp_path / "s").replace(lr=1e20)
    said = r"diverged \(loss nan at step \d+\), and its model cannot be measured .*--lr 1e19"
    with np.errstate(all="ignore"), pytest.raises(sweep.Diverged, match=said):
        sweep.run_one(cfg)  # (the overflows are ignored in a worker too)
    assert not list((tmp_path / "s" / "runs").iterdir())  # no progress file, no arrays


def test_a_sweep_whose_runs_diverged_beyond_measuring_asks_for_a_lower_rate(tmp_path, monkeypatch, capsys):
    def execute(todo, jobs, client):
        for cfg in todo:
            yield cfg, sweep.Diverged("diverged (loss nan at step 2), …")

    monkeypatch.setattr(sweep, "_execute", execute)
    assert sweep.main(SWEEP + ["--out", str(tmp_path / "s")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 run(s) diverged" in last and "lower --lr" in last and "same command" not in last, last


# --------------------------------------------------------------------------------------------
# 3. and 4. Steps and mini-batches
# --------------------------------------------------------------------------------------------


def test_epochs_0_is_refused_as_steps_0_is(tmp_path, capsys, trained):
    no_steps = SWEEP[:2] + SWEEP[4:] + ["--out", str(tmp_path / "s")]
    assert "--epochs 0 trains nothing" in _refused(no_steps + ["--epochs", "0"], capsys, trained)
    with pytest.raises(SystemExit) as stop:  # argparse's refusal: the same one line, exit 2
        sweep.main(no_steps + ["--steps", "0"])
    assert stop.value.code == 2 and "--steps" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_a_batch_larger_than_the_training_digits_is_refused(tmp_path, capsys, trained):
    out = tmp_path / "s"
    line = _refused(SWEEP + ["--batch-size", "201", "--out", str(out)], capsys, trained)  # --limit 200
    assert "--batch-size 201 is more than the 200 training digits" in line
    assert not out.exists()
    assert sweep.main(SWEEP + ["--batch-size", "200", "--out", str(out)]) == 0  # one step, one epoch
    assert len(trained) == 1


# --------------------------------------------------------------------------------------------
# 5. Rows whose settings key is not a string
# --------------------------------------------------------------------------------------------


def test_a_results_row_whose_settings_is_not_a_string_is_one_line_naming_the_line(tmp_path, capsys, trained):
    out = tmp_path / "s"
    out.mkdir()
    text = '{"settings": "another study"}\nnot json\n{"model": "vae", "settings": [1, 2]}\n'
    (out / "results.jsonl").write_text(text)
    line = _refused(SWEEP + ["--out", str(out)], capsys, trained)
    assert f"{out / 'results.jsonl'} line 3" in line and "list" in line, line
    assert (out / "results.jsonl").read_text() == text  # unchanged: not even line 2 set aside
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl"]


def test_a_row_file_whose_settings_is_not_a_string_is_set_aside(tmp_path, capsys, trained):
    out = tmp_path / "s"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "x.row.json").write_text('{"settings": {"steps": 4}}\n')
    assert sweep.main(SWEEP + ["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "x.row.json: not a result" in err.splitlines()[0] and "Traceback" not in err, err
    assert (out / "runs" / "x.row.json.corrupt").exists() and len(trained) == 1


@pytest.mark.parametrize("sub", ["runs", "models"])
def test_a_file_where_the_runs_write_is_refused_before_any_run(sub, tmp_path, capsys, trained):
    """--out/runs (or models) a file: the runs trained, then failed one by one (exit 1, two lines)."""
    out = tmp_path / "study"
    out.mkdir()
    (out / sub).write_text("x")
    line = _refused(SWEEP + ["--out", str(out)], capsys, trained)
    assert f"--out's {sub} folder" in line and "is not a folder" in line, line
    assert sorted(p.name for p in out.iterdir()) == [sub]


def test_a_huge_jobs_starts_no_more_workers_than_runs(monkeypatch):
    """--jobs 2147483647 overflowed the process pool after settings.json was written."""
    import concurrent.futures as cf
    import types

    class Stop(Exception):
        pass

    asked = []

    def pool(max_workers, **kwargs):
        asked.append(max_workers)
        raise Stop

    monkeypatch.setattr(cf, "ProcessPoolExecutor", pool)
    with pytest.raises(Stop):
        list(sweep._execute([types.SimpleNamespace(out="x")] * 3, 2**31 - 1, None))
    assert asked == [3]
