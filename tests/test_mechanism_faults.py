"""Faults of ``python -m minivae.mechanism``: it meets the standard of minivae.explore and the main job.

Bad input is one line on stderr and exit code 2, never a traceback, found before the digits load
and before --out is written:

1. every RUN_DIR is read whole (config.json and checkpoint.npz, checked against each other) first:
   a broken second folder is refused before the first is measured, with --walk too;
2. a backend this machine cannot run (cupy, numba-cuda without a GPU) is refused before any work;
3. --out is checked first: a folder it lacks is made with the first row (as the other commands
   make their --out), a path that cannot be a file is refused; a write that fails while
   measuring is one line and exit 1;
4. a RUN_DIR that does not exist, or is a file, is said as minivae.explore says it.

The run folders are tiny models saved in-process (Z = 3, H = 8) and the digits a small IDX folder:
each test takes a second or two.
"""

import json
import pathlib
import subprocess
import sys
import warnings

import pytest
from test_command_faults import _data_dir, one_line
from test_load_explore import _break_shape, _break_truncate, saved_model

from minivae import backend, explore, mechanism
from minivae.files import WriteError

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache

QUICK = ["--iw-samples", "1", "--iw-examples", "2", "--backend", "numpy"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small MNIST folder (300 training, 40 test digits), made once."""
    return _data_dir(tmp_path_factory.mktemp("mechanism") / "digits")


@pytest.fixture
def no_digits(monkeypatch):
    """The digits must not load: a test that reaches them fails, saying so."""
    from minivae import data

    def refuse(*args, **kwargs):
        raise AssertionError("the digits were loaded before every input was checked")

    monkeypatch.setattr(data, "load_mnist", refuse)


def _mechanism(argv, capsys):
    """(exit code, stderr) of ``python -m minivae.mechanism argv``, run in-process."""
    capsys.readouterr()
    try:
        code = mechanism.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    return code, capsys.readouterr().err


def _good(tmp_path, name="good", **kwargs):
    folder = tmp_path / name
    saved_model(folder, "numpy", **kwargs)
    return folder


# --------------------------------------------------------------------------------------------
# 1. Every run folder is checked before the digits load and before --out is written
# --------------------------------------------------------------------------------------------

BROKEN = {
    "truncated checkpoint": (_break_truncate, "truncated"),
    "empty checkpoint": (lambda run: (run / "checkpoint.npz").write_bytes(b""), "cannot read checkpoint"),
    "garbage checkpoint": (lambda run: (run / "checkpoint.npz").write_bytes(b"\x93NUMPY" * 999), "cannot read"),
    "no checkpoint": (lambda run: (run / "checkpoint.npz").unlink(), "no checkpoint.npz"),
    "shapes not the config's": (_break_shape, "param/enc0.b has shape (7,)"),
}


def test_a_walk_that_diverges_is_one_line_without_numpys_warnings(tmp_path, capsys, digits):
    kept = pathlib.Path(__file__).parents[1] / "docs" / "budget" / "models" / "vae-200-h512-s0-0d158504a33e"
    if not kept.is_dir():  # a trained model: a walk needs units the model does not use
        pytest.skip("the study's kept Z = 200 model is not in this checkout")
    out = tmp_path / "w.jsonl"
    argv = [kept, "--walk", "2", "--walk-lr", "1e300", "--out", out, "--data-dir", digits, *QUICK]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # shown to the user, outside pytest's capture
        code, err = _mechanism(argv, capsys)
    assert code == 2 and "finite" in one_line(err) and "RuntimeWarning" not in err, err
    assert not out.exists()


@pytest.mark.usefixtures("no_digits")
def test_an_out_folder_that_cannot_be_made_is_one_line_before_anything_is_measured(tmp_path, capsys):
    """Under /proc no folder can be made: found when the digits had loaded and the model was
    measured, exit 1, with a line saying the rows were kept."""
    code, err = _mechanism([_good(tmp_path), "--out", "/proc/minivae-nope/sub/m.jsonl", *QUICK], capsys)
    assert code == 2 and "cannot write into --out's folder /proc/minivae-nope/sub" in one_line(err), err
    assert not pathlib.Path("/proc/minivae-nope").exists()
    out = tmp_path / "new" / "deeper" / "m.jsonl"  # folders that can be made: tried, then made with the first row
    code, err = _mechanism([_good(tmp_path, "also"), tmp_path / "nowhere", "--out", out, *QUICK], capsys)
    assert code == 2 and "nowhere" in one_line(err) and not (tmp_path / "new").exists(), err


@pytest.mark.usefixtures("no_digits")
@pytest.mark.parametrize("option", ["--iw-samples", "--iw-check"])
def test_an_estimate_beyond_the_memory_is_one_line_before_the_digits_load(tmp_path, capsys, option):
    out = tmp_path / "m.jsonl"
    code, err = _mechanism([_good(tmp_path), "--out", out, *QUICK, option, "1000000000000"], capsys)
    assert code == 2 and "K = 1,000,000,000,000" in one_line(err) and "memory" in err, err
    assert not out.exists()


@pytest.mark.usefixtures("no_digits")
def test_a_data_dir_the_system_cannot_look_up_is_one_line(tmp_path, capsys):
    too_long = tmp_path / ("x" * 300)  # pathlib raises ENAMETOOLONG; load_mnist does not catch it
    code, err = _mechanism([_good(tmp_path), "--out", tmp_path / "m.jsonl", "--data-dir", too_long, *QUICK], capsys)
    assert code == 2 and one_line(err).startswith("minivae.mechanism: error: --data-dir "), err
    assert "File name too long" in err and not (tmp_path / "m.jsonl").exists()


@pytest.mark.usefixtures("no_digits")
@pytest.mark.parametrize("walk", [[], ["--walk", "2"]], ids=["measure", "walk"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_run_folder_is_refused_before_any_is_measured(tmp_path, capsys, case, walk):
    good, broken = _good(tmp_path), _good(tmp_path, "broken")
    breaks, says = BROKEN[case]
    breaks(broken)
    out = tmp_path / "new" / "m.jsonl"
    code, err = _mechanism([good, broken, "--out", out, *QUICK, *walk], capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("minivae.mechanism: error:"), err
    assert str(broken) in line and says in line, line
    assert not out.parent.exists()  # nothing written, not even the folder


def test_a_model_that_does_not_take_the_digits_is_refused_before_any_is_measured(tmp_path, capsys, digits):
    small, out = _good(tmp_path, "small", data_dim=10), tmp_path / "m.jsonl"
    code, err = _mechanism([_good(tmp_path), small, "--out", out, "--data-dir", digits, *QUICK], capsys)
    line = one_line(err)
    assert code == 2 and f"the model in {small} takes inputs of D = 10 values" in line, err
    assert not out.exists()


def test_the_command_says_a_broken_second_folder_in_one_line_without_a_traceback(tmp_path, digits):
    good, broken = _good(tmp_path), _good(tmp_path, "broken")
    _break_truncate(broken)
    out = tmp_path / "m.jsonl"
    argv = [str(a) for a in (good, broken, "--out", out, "--data-dir", digits, *QUICK)]
    r = subprocess.run([sys.executable, "-m", "minivae.mechanism", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r
    assert str(broken) in one_line(r.stderr)
    assert not out.exists()


def test_good_folders_are_all_measured(tmp_path, capsys, digits):
    one, two = _good(tmp_path, "one"), _good(tmp_path, "two", latent=4)
    out = tmp_path / "m.jsonl"
    code, err = _mechanism([one, two, "--out", out, "--data-dir", digits, *QUICK], capsys)
    assert code == 0 and err == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["run"], r["latent"]) for r in rows] == [("one", 3), ("two", 4)]


# --------------------------------------------------------------------------------------------
# 2. A backend this machine cannot run
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_digits")
@pytest.mark.parametrize("name", ["cupy", "numba-cuda"])
def test_a_gpu_backend_without_a_gpu_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setattr(backend, "gpu_usable", lambda library, simulator=False: (False, "no GPU here"))
    good, out = _good(tmp_path), tmp_path / "m.jsonl"
    code, err = _mechanism([good, "--out", out, "--iw-samples", "1", "--iw-examples", "2", "--backend", name], capsys)
    line = one_line(err)
    assert code == 2 and f"cannot create the model of {good}" in line and f"backend '{name}' needs" in line, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 3. --out
# --------------------------------------------------------------------------------------------


def test_out_in_a_folder_that_does_not_exist_is_made_with_the_first_row(tmp_path, capsys, digits):
    out = tmp_path / "a" / "b" / "m.jsonl"
    code, err = _mechanism([_good(tmp_path), "--out", out, "--data-dir", digits, *QUICK], capsys)
    assert code == 0 and err == ""
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.usefixtures("no_digits")
def test_an_out_that_cannot_be_a_file_is_refused_before_any_work(tmp_path, capsys):
    good = _good(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "rows.jsonl").write_text('{"run": "x"}\nnot json\n')
    cases = [
        (tmp_path / "a-file" / "m.jsonl", "--out's folder", "is not a folder"),
        (tmp_path / "a-file" / "sub" / "m.jsonl", "--out's folder", "is not a folder"),
        (tmp_path, "is a folder, not a file", ""),
        (tmp_path / "rows.jsonl", "rows.jsonl line 2", "not JSON"),
    ]
    for out, says, also in cases:
        code, err = _mechanism([good, "--out", out, *QUICK], capsys)
        line = one_line(err)
        assert code == 2 and says in line and also in line, (out, err)
    assert (tmp_path / "rows.jsonl").read_text() == '{"run": "x"}\nnot json\n'


def test_a_write_that_fails_while_measuring_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch, digits):
    from minivae import files

    def full(path, text):
        raise WriteError(f"cannot write {path}: No space left on device")

    good, out = _good(tmp_path), tmp_path / "m.jsonl"
    monkeypatch.setattr(files, "atomic_write_text", full)
    code, err = _mechanism([good, "--out", out, "--data-dir", digits, *QUICK], capsys)
    line = one_line(err)
    assert code == 1 and "No space left on device" in line and "stopping" in line, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 4. A RUN_DIR that is no folder: said as explore says it
# --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_digits")
@pytest.mark.parametrize(
    "make,says", [(lambda p: None, "does not exist"), (lambda p: p.write_text("x"), "is not a folder")]
)
def test_a_run_dir_that_is_no_folder_is_said_as_explore_says_it(tmp_path, capsys, make, says):
    run = tmp_path / "run"
    make(run)
    code, err = _mechanism([run, "--out", tmp_path / "m.jsonl", *QUICK], capsys)
    assert code == 2 and one_line(err) == f"minivae.mechanism: error: {run} {says}", err
    capsys.readouterr()
    assert explore.main([str(run)]) == 2
    assert one_line(capsys.readouterr().err) == f"minivae.explore: error: {run} {says}"
