"""Faults of the commands beside the main job (issue #26): each meets the main job's standard.

Bad input is one line on stderr and exit code 2, a failed run one line and exit 1, never a
traceback; every check comes before the first training step; nothing is left half-written.

1. a stdout that cannot be written (a pipe closed early, a full disk) does not stop training;
2. explore: what it accepts it draws, what it cannot draw it refuses before making its folder;
3. linear and identity check their output folder and the memory before the first step;
4. Ctrl-C while a command imports its modules is one line;
5. numbers finite as float64 but inf in the model's float32 are refused (set_params, Adam, resume);
6. kernels.gemm_choice checks memory and its table's path first, and leaves no temporary file;
7. benchmarks/throughput.py checks every option's value in one line.
"""

import errno
import gzip
import importlib.util
import json
import os
import pathlib
import resource
import shutil
import signal
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from test_load_explore import saved_model, trained_run
from test_train import SMALL as TRAIN_SMALL

import minivae
from minivae import cli, data, explore, identity, linear, train
from minivae.backend import available_backends
from minivae.files import WriteError
from minivae.guards import OutFolder

SMALL = TRAIN_SMALL + ["--limit", "300"]

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# 1. stdout
# --------------------------------------------------------------------------------------------


def _train_command(out):
    argv = [a for a in SMALL if a != "--quiet"]  # it prints a line per epoch
    return [sys.executable, "-m", "minivae.train", *argv, "--epochs", "3", "--out", str(out)]


def _trained_every_epoch(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["final"]["epoch"] == 3


def test_training_goes_on_when_its_stdout_pipe_is_closed_early(tmp_path):
    """``python -m minivae.train … | head -n 1``: the reader goes after the first line."""
    out = tmp_path / "run"
    p = subprocess.Popen(_train_command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("data:")
    p.stdout.close()  # every later write to the pipe fails (EPIPE)
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert err == ""
    _trained_every_epoch(out)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_training_goes_on_when_its_stdout_is_a_full_disk(tmp_path):
    out = tmp_path / "run"
    with open("/dev/full", "w") as full:
        r = subprocess.run(_train_command(out), stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    _trained_every_epoch(out)


# --------------------------------------------------------------------------------------------
# 2. python -m minivae.explore
# --------------------------------------------------------------------------------------------


def _data_dir(folder, n_train=300, n_test=40, test_label=None):
    """MNIST IDX files of random digits; labels 0–9 in turn, or all ``test_label`` in the test split."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(n_train)
    for name, n in zip(data.MNIST_FILES, (n_train, n_train, n_test, n_test), strict=True):
        if "images" in name:
            array = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        elif name.startswith("t10k") and test_label is not None:
            array = np.full(n, test_label, np.uint8)
        else:
            array = (np.arange(n) % 10).astype(np.uint8)
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.tobytes()))
    return folder


def _explore(argv, capsys):
    capsys.readouterr()
    try:
        code = explore.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def explored_run(tmp_path_factory):
    """A one-epoch run of Z = 2 (made once; tests copy it)."""
    out = tmp_path_factory.mktemp("explore") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINIVAE_DATA", str(out.parent / "cache"))
        mp.setenv("MINIVAE_MIRRORS", "http://127.0.0.1:9/")
        return trained_run(out, 2)


def _copy(run, tmp_path):
    return pathlib.Path(shutil.copytree(run, tmp_path / "run"))


def test_explore_bad_values_are_one_line_before_any_folder_is_made(explored_run, tmp_path, capsys, monkeypatch):
    run = _copy(explored_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    for argv, says in (
        ([run, "--seed", "-1"], "--seed"),
        ([run, "--out", ""], "--out"),
        (["", "--out", "x"], "RUN_DIR"),
        ([run, "--data-dir", ""], "--data-dir"),
        ([run, "--out", "/proc/minivae-no"], "cannot write into --out"),
        ([run, "--out", tmp_path / ("x" * 300)], "File name too long"),
        ([tmp_path / ("x" * 300)], "File name too long"),
        ([run, "--data-dir", tmp_path / ("x" * 300)], "File name too long"),
    ):
        code, err = _explore(argv, capsys)
        assert code == 2 and says in one_line(err), (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not (run / "explore").exists()


def test_explore_of_test_digits_of_one_class_draws_every_figure(explored_run, tmp_path, capsys):
    run = _copy(explored_run, tmp_path)
    digits = _data_dir(tmp_path / "sevens", test_label=7)
    code, err = _explore([run, "--data-dir", digits, "--out", tmp_path / "fig", "--quiet"], capsys)
    assert code == 0, err
    names = ["interpolations.png", "latent_map.png", "manifold.png", "samples_by_temperature.png", "traversals.png"]
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == names
    # Pairs of different digits when every digit has one label.
    pairs = explore.interpolation_pairs(np.zeros(5), 8, np.random.default_rng(0))
    assert len(pairs) == 5 and all(a != b for a, b in pairs)


def test_explore_refuses_a_model_that_does_not_take_the_digits(tmp_path, capsys):
    """A run of D = 10 that minivae.load accepts: refused in one line, nothing written."""
    saved_model(tmp_path / "run", "numpy", data_dim=10)
    assert minivae.load(tmp_path / "run").data_dim == 10
    code, err = _explore([tmp_path / "run"], capsys)
    assert code == 2 and "D = 10" in one_line(err)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.npz", "config.json"]


def test_explore_too_few_test_digits_is_one_line(explored_run, tmp_path, capsys):
    run = _copy(explored_run, tmp_path)
    digits = _data_dir(tmp_path / "one", n_test=1)
    code, err = _explore([run, "--data-dir", digits], capsys)
    assert code == 2 and "at least 2 test digits" in one_line(err)
    assert not (run / "explore").exists()


def test_explore_a_figure_that_cannot_be_written_is_one_line_and_exit_1(explored_run, tmp_path, capsys, monkeypatch):
    from minivae import plots

    run = _copy(explored_run, tmp_path)

    def full(path, *a, **k):
        raise WriteError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(plots, "traversals", full)
    code, err = _explore([run, "--quiet"], capsys)
    line = one_line(err)
    assert code == 1 and "No space left" in line and "traversals.png" in line and "interpolations.png" in line
    assert sorted(p.name for p in (run / "explore").iterdir()) == ["interpolations.png", "samples_by_temperature.png"]


def test_explore_into_a_folder_another_explore_writes_into_is_refused(explored_run, tmp_path, capsys):
    run = _copy(explored_run, tmp_path)
    with OutFolder(run / "explore", "--out", "explore"):
        code, err = _explore([run], capsys)
        assert code == 2 and "another explore" in one_line(err)
    assert not (run / "explore").exists()  # the holder made it, wrote nothing, and removed it


# --------------------------------------------------------------------------------------------
# 3. python -m minivae.linear and python -m minivae.identity
# --------------------------------------------------------------------------------------------

LINEAR = ["--latent", "5", "--sigma2", "0.1", "--steps", "20", "--batch-size", "100", "--quiet"]
IDENTITY = ["--latent", "20", "--hidden", "32", "--epochs", "1", "--linear-steps", "20", "--n", "50"]
IDENTITY += ["--backend", "numpy", "--quiet"]


def _command(main, argv, capsys):
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.usefixtures("never_trains")
@pytest.mark.parametrize("command", ["linear", "identity"])
def test_out_and_values_are_checked_before_the_first_step(command, tmp_path, capsys, monkeypatch):
    main, argv = (linear.main, LINEAR) if command == "linear" else (identity.main, IDENTITY)
    digits = _data_dir(tmp_path / "digits")
    (tmp_path / "file").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "available_memory", lambda: 8 * 10**9)
    for extra, says in (
        (["--out", "/proc/minivae-no"], "cannot write into --out"),
        (["--out", tmp_path / "file" / "sub"], "not a folder"),
        (["--out", tmp_path / ("x" * 300)], "File name too long"),
        (["--out", ""], "--out"),
        (["--out", "o", "--data-dir", ""], "--data-dir"),
        (["--out", "o", "--data-dir", tmp_path / ("x" * 300)], "File name too long"),
        (["--out", "o", "--seed", "-1"], "--seed"),
        (["--out", "o", "--latent", "100000000"], "8.0 GB"),
    ):
        code, err = _command(main, argv + ["--data-dir", digits] + extra, capsys)
        assert code == 2 and says in one_line(err), (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "file"]


def test_linear_on_a_full_disk_is_one_line_and_exit_1_and_leaves_nothing(tmp_path):
    """A file-size limit (as a full disk): result.json cannot be written after training."""
    out = tmp_path / "out"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    r = subprocess.run(
        [sys.executable, "-m", "minivae.linear", *LINEAR, "--data-dir", str(_data_dir(tmp_path / "digits"))]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "File too large" in line and "result.json" in line
    assert not out.exists()  # made for the run, nothing in it: removed again


def test_identity_on_a_full_disk_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def full(models, sets, path, *a):
        raise WriteError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(identity, "plot_reconstructions", full)
    out = tmp_path / "out"
    code, err = _command(identity.main, IDENTITY + ["--data-dir", _data_dir(tmp_path / "digits"), "--out", out], capsys)
    line = one_line(err)
    assert code == 1 and "No space left" in line and "identity.png" in line
    assert sorted(p.name for p in out.iterdir()) == ["identity.json", "identity.md"]  # whole files, no lock


def test_identity_that_diverges_is_one_line_and_exit_1_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = IDENTITY + ["--data-dir", _data_dir(tmp_path / "digits"), "--out", out, "--lr", "1e23"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NumPy's overflow warnings would be shown to the user
        code, err = _command(identity.main, argv, capsys)
    line = one_line(err)
    assert code == 1 and "diverged at --lr 1e+23" in line and "lower --lr" in line
    assert not out.exists()


def test_linear_summarize_refuses_a_foreign_result_in_one_line(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text('{"sigma2": 0.1}')
    code, err = _command(linear.main, ["--summarize", tmp_path], capsys)
    assert code == 2 and "not a result" in one_line(err)
    for folder, says in ((tmp_path / "nowhere", "not a folder"), (tmp_path / ("x" * 300), "File name too long")):
        code, err = _command(linear.main, ["--summarize", folder], capsys)
        assert code == 2 and says in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


# --------------------------------------------------------------------------------------------
# 4. Ctrl-C while a command is still importing its modules
# --------------------------------------------------------------------------------------------

INTERRUPT_AT_IMPORT = """
import os, signal, sys, time


class Interrupt:  # Ctrl-C the moment NumPy is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


sys.meta_path.insert(0, Interrupt())
"""


@pytest.mark.parametrize("module", ["minivae.train", "minivae.explore", "minivae.linear"])
def test_ctrl_c_while_a_command_imports_is_one_line(module, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(INTERRUPT_AT_IMPORT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.getcwd()]))
    r = subprocess.run(
        [sys.executable, "-m", module, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode in (130, -signal.SIGINT), r.stderr
    assert one_line(r.stderr) == f"{module}: interrupted while starting; nothing was written"
    assert not (tmp_path / "out").exists()
    # A program that imports minivae keeps its own traceback.
    r = subprocess.run([sys.executable, "-c", "import minivae"], capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" in r.stderr and "KeyboardInterrupt" in r.stderr


# --------------------------------------------------------------------------------------------
# 5. Numbers finite in float64 but inf in the model's float32
# --------------------------------------------------------------------------------------------

HUGE = 1e39  # finite as float64, inf as float32


def _huge(a):
    a = np.array(a, np.float64)
    a.flat[0] = HUGE
    return a


@pytest.mark.parametrize("backend", [b for b in available_backends() if b in ("numpy", "cpu-fused")])
def test_numbers_inf_in_the_models_dtype_are_refused_and_change_nothing(backend):
    vae = minivae.VAE(784, 3, (8,), seed=1, backend=backend)
    opt = minivae.Adam(vae.params)
    before, state = vae.get_params(), opt.state_dict()
    for key in ("enc0.W", "dec1.b"):
        with pytest.raises(ValueError, match="inf in float32"):
            vae.set_params(dict(before, **{key: _huge(before[key])}))
    for key in ("m.enc0.b", "v.dec0.W"):
        with pytest.raises(ValueError, match="inf in float32"):
            opt.load_state_dict(dict(state, **{key: _huge(state[key])}))
    after, state_after = vae.get_params(), opt.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(np.array_equal(state[k], state_after[k]) for k in state)
    # The largest float32 itself, given as float64, is finite there.
    edge = dict(before, **{"enc0.W": np.full(before["enc0.W"].shape, np.finfo(np.float32).max, np.float64)})
    vae.set_params(edge)
    assert np.isfinite(vae.get_params()["enc0.W"]).all()


@pytest.mark.parametrize("key", ["param/enc0.W", "opt/v.dec0.b"])
def test_resume_refuses_a_checkpoint_with_numbers_inf_in_float32(key, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*SMALL, "--epochs", "1", "--out", str(out)]) == 0
    path = out / "checkpoint.npz"
    with np.load(path) as ck:
        arrays = {k: ck[k] for k in ck.files}
    arrays[key] = _huge(arrays[key])
    np.savez(path, **arrays)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert train.main(["--resume", str(out), "--epochs", "2"]) == 2
    assert "inf in float32" in one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, no lock left


# --------------------------------------------------------------------------------------------
# 6. python -m kernels.gemm_choice
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_timing(monkeypatch):
    """The choice without the timing: every product picks OpenBLAS at once."""
    from kernels import gemm_choice

    def measure(shapes, threads, repeats):
        return {gemm_choice.key(*s, threads): {"blas_ms": 1.0, "ours_ms": 2.0, "pick": "blas"} for s in shapes}

    monkeypatch.setattr(gemm_choice, "measure", measure)
    monkeypatch.setattr(gemm_choice, "step_check", lambda entries, *a, **k: entries)
    return gemm_choice


GEMM_SMALL = ["--latents", "3", "--hidden", "8", "--batch-size", "4", "--threads", "1", "--repeats", "1"]


def test_gemm_choice_refuses_what_cannot_fit_or_be_written_before_timing(tmp_path, capsys, monkeypatch):
    from kernels import gemm_choice

    def measure(*a, **k):
        raise AssertionError("timed before the checks were done")

    monkeypatch.setattr(gemm_choice, "measure", measure)
    monkeypatch.setattr(cli, "available_memory", lambda: 8 * 10**9)
    monkeypatch.setenv(gemm_choice.ENV, str(tmp_path / "choice.json"))
    code, err = _command(gemm_choice.main, ["--hidden", "100000000"], capsys)
    assert code == 2 and "8.0 GB" in one_line(err)
    for where in ("/proc/minivae-no/choice.json", str(tmp_path)):
        monkeypatch.setenv(gemm_choice.ENV, where)
        code, err = _command(gemm_choice.main, GEMM_SMALL, capsys)
        assert code == 2 and "choice table" in one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_gemm_choice_leaves_no_temporary_file_when_the_write_fails(no_timing, tmp_path, capsys, monkeypatch):
    path = tmp_path / "choice.json"
    monkeypatch.setenv(no_timing.ENV, str(path))
    path.write_text('{"old": {"pick": "ours"}}\n')
    (tmp_path / "choice.json.tmp").write_text('{"half')  # what a failed write of an earlier version left
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    code, err = _command(no_timing.main, GEMM_SMALL, capsys)
    assert code == 1 and "No space left" in one_line(err) and "choice.json" in one_line(err)
    assert path.read_text() == '{"old": {"pick": "ours"}}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["choice.json", "choice.json.tmp"]
    monkeypatch.setattr(os, "replace", real_replace)
    code, err = _command(no_timing.main, GEMM_SMALL, capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["choice.json"]  # the old leftover is gone too
    assert "old" in json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# 7. benchmarks/throughput.py
# --------------------------------------------------------------------------------------------

THROUGHPUT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.mark.parametrize(
    "bad",
    [
        ["--latents", "abc"],
        ["--latents", "20,0"],
        ["--latents", ""],
        ["--hidden", "x"],
        ["--batch", "0"],
        ["--batch", "1.5"],
        ["--repeats", "-1"],
        ["--warmup", "-1"],
        ["--target", "nan"],
        ["--settle", "-1"],
        ["--threads", "0"],
        ["--runners", "nope"],
        ["--runners", ","],
        ["--peak-n", "-5"],
        ["--out", ""],
    ],
)
def test_throughput_bad_values_are_one_line_and_exit_2(bad, capsys):
    spec = importlib.util.spec_from_file_location("throughput", THROUGHPUT)
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    code, err = _command(tp.main, bad, capsys)
    assert code == 2 and bad[0] in one_line(err), err


def test_throughput_as_a_command_says_a_bad_value_or_out_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for argv in (["--latents", "abc"], ["--out", str(tmp_path / "file")]):
        r = subprocess.run([sys.executable, str(THROUGHPUT), *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "--" in one_line(r.stderr), r.stderr


# --------------------------------------------------------------------------------------------
# 8. the sweep's --out, its data folder's name, and resume on other digits of the same count
# --------------------------------------------------------------------------------------------


def test_sweep_refuses_an_empty_out(tmp_path, capsys, monkeypatch):
    from minivae import sweep

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        sweep.main(["--out", "", "--steps", "2"])
    assert e.value.code == 2 and "--out" in one_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_one_data_folder_written_three_ways_is_one_setting(tmp_path, monkeypatch):
    from minivae import sweep

    (tmp_path / "data" / "mnist").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    keys = {
        sweep.settings_of(sweep.parse_args(["--steps", "9", "--data-dir", d]), 9)[1]
        for d in ("data/mnist", "./data/mnist/", str(tmp_path / "data" / "mnist"))
    }
    assert len(keys) == 1
    outside = sweep.parse_args(["--steps", "9", "--data-dir", str(tmp_path.parent)])
    assert sweep.settings_of(outside, 9)[0]["data_dir"] == str(tmp_path.parent)  # absolute when outside


def test_resume_refuses_other_digits_of_the_same_count(tmp_path, capsys):
    from test_data import fake_mnist

    first, other = tmp_path / "a", tmp_path / "b"
    for folder, seed in ((first, 1), (other, 3)):
        folder.mkdir()
        for name, blob in fake_mnist(seed=seed, n_train=200, n_test=40)[0].items():
            (folder / name).write_bytes(blob)
    out = tmp_path / "run"
    args = [a for a in SMALL if a != "--limit" and a != "300"]
    assert train.main([*map(str, args), "--epochs", "1", "--data-dir", str(first), "--out", str(out)]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert train.main(["--resume", str(out), "--epochs", "2", "--data-dir", str(other), "--quiet"]) == 2
    assert "other digits" in one_line(capsys.readouterr().err)
    assert (out / "checkpoint.npz").read_bytes() == before
    assert train.main(["--resume", str(out), "--epochs", "2", "--data-dir", str(first), "--quiet"]) == 0
