"""Faults and bad input: one clear line, nothing lost, nothing read out of bounds.

1. every public entry of every backend that runs here refuses wrong shapes, dtypes, values;
2. the main job: one line and the right exit code for each fault a user can cause;
3. no silent surprises (contradicting options, occupied or locked folders, moved data);
4. an interrupted epoch's train loss is reported as without the interruption;
5. downloads: a dripping mirror meets a deadline; the fallback says why;
6. artifacts get the mode the umask gives.
"""

import errno
import fcntl
import gzip
import http.server
import json
import os
import pathlib
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from functools import partial

import numpy as np
import pytest
from test_train import SMALL as TRAIN_SMALL

from minivae import checks, cli, data, files, study, sweep, train
from minivae.ae import AE
from minivae.backend import available_backends
from minivae.optim import Adam
from minivae.vae import VAE

BACKENDS = [b for b in available_backends() if b in ("numpy", "cpu-fused")]
SMALL = TRAIN_SMALL + ["--limit", "300"]  # the main job's small run, on 300 digits

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache


@pytest.fixture
def no_figures(monkeypatch):
    """The four figures of a run are not what these tests look at, and take most of a tiny run."""
    from minivae import plots

    monkeypatch.setattr(plots, "save_all", lambda *a, **k: None)


def run_main(argv):
    try:
        return train.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        return e.code


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# 1. The model's public entries, fuzzed
# --------------------------------------------------------------------------------------------


def _models(backend):
    return [VAE(784, 3, (8,), seed=1, backend=backend), AE(784, 3, (8,), seed=1, backend=backend)]


def _refused(call, *words):
    with pytest.raises(ValueError) as e:
        call()
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return str(e.value)


X = np.random.default_rng(0).random((5, 784)).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_encode_decode_refuse_bad_input_on_every_backend(backend):
    def bad_x(x):
        return [
            (x[0], "x", "2-D"),
            (x[:, :783], "x", "784"),
            (x[:0], "x", "empty"),
            (x[None], "x", "2-D"),
            (x.astype(np.complex64), "x", "real"),
            (np.full((5, 784), "a"), "x", "real"),
            (np.where(x > 0.5, np.nan, x), "x", "[0, 1]"),
            (x + 1, "x", "[0, 1]"),
            (x - 1, "x", "[0, 1]"),
            (np.full((5, 784), np.inf), "x", "[0, 1]"),
            ([[0.5] * 784, [0.5] * 3], "x", ""),
        ]

    for model in _models(backend):
        for x, *words in bad_x(X):
            _refused(partial(model.forward, x), *words)
            _refused(partial(model.encode, x), *words)
        for z in (
            np.zeros(3, np.float32),
            np.zeros((2, 4), np.float32),
            np.zeros((0, 3)),
            np.full((2, 3), np.nan),
            np.zeros((2, 3), complex),
        ):
            _refused(partial(model.decode_logits, z), "z")
        _refused(partial(model.sample, 2.5), "n")
        # A wrong layout or dtype is made right, with the same numbers.
        ref = model.forward(X, np.zeros((5, 3), np.float32))
        assert model.forward(np.asfortranarray(X.astype(np.float64)), np.zeros((5, 3))) == ref
        wide = np.zeros((5, 2 * 784), np.float32)
        wide[:, ::2] = X
        assert model.forward(wide[:, ::2], np.zeros((5, 3), np.float32)) == ref  # strided view
    vae = _models(backend)[0]
    for eps, word in (
        (np.zeros((4, 3), np.float32), "(5, 3)"),
        (np.zeros((5, 4), np.float32), "(5, 3)"),
        (np.zeros(15, np.float32), "2-D"),
        (np.full((5, 3), np.inf), "finite"),
    ):
        _refused(partial(vae.forward, X, eps=eps), "eps", word)


def test_the_issue_example_no_longer_reads_past_the_array():
    vae = VAE(latent=4, hidden=(16,), backend=BACKENDS[-1])
    _refused(lambda: vae.forward(X[:, :784][:5].repeat(2, axis=0)[:8], eps=np.zeros((4, 4), "f4")), "eps", "(8, 4)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_params_and_adam_refuse_bad_state_and_change_nothing(backend):
    vae = VAE(784, 3, (8,), seed=1, backend=backend)
    opt = Adam(vae.params)
    vae.forward(X)
    opt.step(vae.backward())
    before, state = vae.get_params(), opt.state_dict()
    good = vae.get_params()

    def edited(k, v):
        d = dict(good)
        d[k] = v
        return d

    for values, word in (
        (edited("enc0.W", good["enc0.W"][:5]), "enc0.W"),
        (edited("enc0.b", good["enc0.b"][:1]), "enc0.b"),
        (edited("dec1.b", np.full_like(good["dec1.b"], np.nan)), "non-finite"),
        (edited("enc0.W", good["enc0.W"].astype(complex)), "real"),
        ({k: v for k, v in good.items() if k != "dec0.W"}, "lacks dec0.W"),
        (dict(good, extra=np.zeros(1)), "unknown extra"),
        ([1, 2], "dict"),
    ):
        _refused(partial(vae.set_params, values), "values", word)
    for st, word in (
        (dict(state, **{"m.enc0.b": state["m.enc0.b"][:1]}), "m.enc0.b"),
        (dict(state, **{"v.enc0.W": -np.abs(state["v.enc0.W"]) - 1}), "negative"),
        (dict(state, t=np.array(-1)), "t"),
        (dict(state, t=2.5), "t"),
        ({k: v for k, v in state.items() if k != "t"}, "'t'"),
        (dict(state, **{"v.dec1.b": np.full_like(state["v.dec1.b"], np.inf)}), "non-finite"),
    ):
        _refused(partial(opt.load_state_dict, st), word)
    grads = vae.backward()
    for g, word in (
        ({k: v for k, v in grads.items() if k != "enc0.W"}, "lacks"),
        ({k: np.asarray(v)[..., :1] for k, v in grads.items()}, "shape"),
    ):
        _refused(partial(opt.step, g), "grads", word)
    after, state_after = vae.get_params(), opt.state_dict()
    for k in before:
        assert np.array_equal(before[k], after[k])
    for k in state:
        assert np.array_equal(state[k], state_after[k])


def test_constructors_refuse_non_integers_and_bad_numbers():
    for kwargs, word in (
        (dict(latent=2.5), "latent"),
        (dict(latent=0), "latent"),
        (dict(latent="3"), "latent"),
        (dict(latent=True), "latent"),
        (dict(hidden=(8, 0)), "hidden"),
        (dict(hidden=8), "hidden"),
        (dict(data_dim=-1), "data_dim"),
        (dict(seed=-1), "seed"),
        (dict(beta=np.inf), "beta"),
        (dict(beta=-1), "beta"),
        (dict(dtype="int8"), "dtype"),
        (dict(dtype="nope"), "dtype"),
    ):
        _refused(partial(VAE, **kwargs), word)
        if "beta" not in kwargs:
            _refused(partial(AE, **kwargs), word)
    params = VAE(784, 2, (4,)).params
    for kwargs, word in (
        (dict(lr=np.inf), "lr"),
        (dict(lr=0), "lr"),
        (dict(lr=np.nan), "lr"),
        (dict(lr=-1), "lr"),
        (dict(betas=(1.0, 0.9)), "betas[0]"),
        (dict(betas=(0.9,)), "betas"),
        (dict(eps=0), "eps"),
    ):
        _refused(partial(Adam, params, **kwargs), word)
    _refused(lambda: Adam({}), "params")


def test_numpy_and_cpu_fused_refuse_with_the_same_message():
    if "cpu-fused" not in BACKENDS:
        pytest.skip("cpu-fused does not run here")
    cases = [
        lambda m: m.forward(X[0]),
        lambda m: m.forward(X + 2),
        lambda m: m.encode(X[:0]),
        lambda m: m.decode_logits(np.zeros((2, 5))),
        lambda m: m.forward(X, np.zeros((1, 3))),
        lambda m: m.set_params({}),
    ]
    for case in cases:
        messages = set()
        for backend in ("numpy", "cpu-fused"):
            with pytest.raises(ValueError) as e:
                case(VAE(784, 3, (8,), backend=backend))
            messages.add(str(e.value))
        assert len(messages) == 1, messages


def test_cpu_fused_ops_refuse_wrong_shapes_dtypes_and_layouts():
    if "cpu-fused" not in BACKENDS:
        pytest.skip("cpu-fused does not run here")
    from kernels.cpu_fused import CpuFusedOps

    ops, f = CpuFusedOps(), np.float32
    a, b = np.zeros((4, 6), f), np.zeros(6, f)
    h, eps, z, kl = np.zeros((4, 6), f), np.zeros((4, 3), f), np.zeros((4, 3), f), np.zeros(4, f)
    p = np.zeros(10, f)
    calls = [
        lambda: ops.bias_act(a, np.zeros(5, f), "relu", a),
        lambda: ops.bias_act(a, b, "relu", np.zeros((3, 6), f)),
        lambda: ops.bias_act(a.astype(np.float64), b, "relu", a),
        lambda: ops.bias_act(np.zeros(6, f), b, "relu", b),
        lambda: ops.act_backward(a, np.zeros((4, 5), f), "relu", a),
        lambda: ops.colsum(a, np.zeros(5, f)),
        lambda: ops.reparam_kl(h, np.zeros((3, 3), f), z, kl),
        lambda: ops.reparam_kl(h, eps, z, np.zeros(3, f)),
        lambda: ops.reparam_kl_backward(z, h, eps, 1.0, np.zeros((4, 5), f)),
        lambda: ops.bernoulli_nll(a, np.zeros((4, 5), f), 1.0, np.zeros(4, f), a),
        lambda: ops.bernoulli_nll(a, a, 1.0, np.zeros(3, f), a),
        lambda: ops.bernoulli_nll(a, np.asfortranarray(a), 1.0, np.zeros(4, f), a),
        lambda: ops.standard_normal((1, 2), np.zeros((4, 6), f)[:, ::2]),
        lambda: ops.adam(p, np.zeros(9, f), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
        lambda: ops.adam(p, p.copy(), p.copy()[:5], p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
        lambda: ops.adam(p.reshape(2, 5), p.copy(), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_checks_cost_of_a_batch_is_small():
    """One (128, 784) float32 batch: the [0, 1] check is one min and one max."""
    x = np.random.default_rng(0).random((128, 784)).astype(np.float32)
    assert checks.batch("x", x, 784, np.float32, unit=True) is x  # no copy when already right


# --------------------------------------------------------------------------------------------
# 2.–4. The main job
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run (made once; tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    env = {"MINIVAE_DATA": str(out.parent / "cache"), "MINIVAE_MIRRORS": "http://127.0.0.1:9/"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.MonkeyPatch.context() as mp:
            from minivae import plots

            mp.setattr(plots, "save_all", lambda *a, **k: None)
            assert run_main(SMALL + ["--epochs", "2", "--out", out]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out


def copy_run(finished, tmp_path, name="run"):
    return pathlib.Path(shutil.copytree(finished, tmp_path / name))


def edit_checkpoint(out, **changes):
    path = out / "checkpoint.npz"
    with np.load(path) as ck:
        arrays = {k: ck[k] for k in ck.files}
    for k, v in changes.items():
        k = k.replace("__", "/")
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v(arrays[k]) if callable(v) else v
    np.savez(path, **arrays)


def _nan_first(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


@pytest.mark.parametrize(
    "case",
    [
        "foreign",
        "config-json",
        "config-value",
        "rng",
        "nan-param",
        "shape",
        "broadcastable-opt",
        "truncated",
        "text",
        "no-epoch",
    ],
)
def test_a_bad_checkpoint_is_one_line_and_exit_2(case, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    path = out / "checkpoint.npz"
    if case == "foreign":
        np.savez(path, weights=np.zeros(3))
    elif case == "config-json":
        edit_checkpoint(out, config=np.array("{not json"))
    elif case == "config-value":
        edit_checkpoint(out, config=lambda c: np.array(str(c).replace('"batch_size": 64', '"batch_size": -1')))
    elif case == "rng":
        edit_checkpoint(out, rng__model=np.array('{"bit_generator": "nope"}'))
    elif case == "nan-param":
        edit_checkpoint(out, **{"param/enc0.W": _nan_first})
    elif case == "shape":
        edit_checkpoint(out, **{"param/dec0.W": lambda a: a[:, :3]})
    elif case == "broadcastable-opt":
        edit_checkpoint(out, **{"opt/v.enc0.b": lambda a: a[:1]})
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif case == "text":
        path.write_text("not a checkpoint")
    elif case == "no-epoch":
        edit_checkpoint(out, epoch=None)
    before = sorted(p.name for p in out.iterdir())
    assert run_main(["--resume", out, "--epochs", "3"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "checkpoint" in line
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written, no lock left


@pytest.mark.parametrize("case", ["truncated", "edited-value", "missing-row", "not-an-object"])
def test_a_bad_metrics_file_on_resume_is_one_line_and_exit_2(case, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines()
    if case == "truncated":
        path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    elif case == "edited-value":
        path.write_text(lines[0] + "\n" + lines[1].replace('"train_loss": ', '"train_loss": "x", "old": ') + "\n")
    elif case == "missing-row":
        path.write_text(lines[1] + "\n")
    else:
        path.write_text("[1, 2]\n" + lines[1] + "\n")
    text = path.read_text()
    assert run_main(["--resume", out, "--epochs", "3"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "metrics.jsonl" in line and "resume" in line
    assert path.read_text() == text


@pytest.mark.usefixtures("no_figures")
def test_resume_refuses_options_that_contradict_the_checkpoint(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    assert run_main(["--resume", out, "--latent", "50", "--hidden", "256"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--latent 50" in line and "--hidden 256" in line and "latent 6" in line
    assert run_main(["--resume", out, "--epochs", "1"]) == 2  # fewer than done
    assert "fewer" in one_line(capsys.readouterr().err)
    assert run_main(["--resume", out, "--overwrite"]) == 2
    one_line(capsys.readouterr().err)
    assert run_main(["--resume", out, "--out", tmp_path / "elsewhere"]) == 2
    one_line(capsys.readouterr().err)
    # Options equal to the checkpoint's do not contradict it.
    assert run_main(["--resume", out, "--latent", "6", "--hidden", "24", "--epochs", "2", "--quiet"]) == 0


@pytest.mark.usefixtures("no_figures")
def test_occupied_folder_is_refused_and_overwrite_replaces_the_run(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    before = (out / "checkpoint.npz").read_bytes()
    assert run_main(SMALL + ["--epochs", "1", "--lr", "0.01", "--out", out]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line
    assert (out / "checkpoint.npz").read_bytes() == before
    # --overwrite with a run that diverges at once: nothing of the old run stays beside the new.
    (out / "mine.txt").write_text("not an artifact")
    assert run_main(SMALL + ["--epochs", "1", "--lr", "1e9", "--out", out, "--overwrite"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "no checkpoint was saved" in line and "last good" not in line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "mine.txt"]
    assert json.loads((out / "config.json").read_text())["lr"] == 1e9


@pytest.mark.usefixtures("no_figures")
def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a run in another process holds it
    try:
        assert run_main(SMALL + ["--epochs", "1", "--out", out]) == 2
        line = one_line(capsys.readouterr().err)
        assert "another run" in line and "4242" in line
    finally:
        os.close(fd)
    assert run_main(SMALL + ["--epochs", "1", "--out", out]) == 0  # the lock is free again
    assert not (out / ".lock").exists()


def test_unwritable_out_and_bad_paths_are_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "sub", "/proc/minivae-no", tmp_path / ("x" * 300), blocker, ""):
        assert run_main(SMALL + ["--epochs", "1", "--out", out]) == 2, out
        one_line(capsys.readouterr().err)
    assert run_main(SMALL + ["--data-dir", "", "--out", tmp_path / "o"]) == 2
    one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_sizes_that_cannot_fit_are_refused_with_the_number(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "available_memory", lambda: 8 * 10**9)
    for option in (
        ["--latent", "1000000000"],
        ["--hidden", "100000000"],
        ["--iw-samples", "20000"],
        ["--batch-size", "100000000"],
    ):
        assert run_main(SMALL + option + ["--out", tmp_path / "o"]) == 2
        line = one_line(capsys.readouterr().err)
        assert "memory" in line and "8.0 GB" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("no_figures")
def test_write_errors_are_one_line_exit_1_and_keep_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_savez, calls = np.savez, {"n": 0}

    def savez(f, **arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint of epoch 2
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    assert run_main(SMALL + ["--epochs", "3", "--out", out]) == 1
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "checkpoint.npz" in line and "epoch 1" in line
    with np.load(out / "checkpoint.npz") as ck:
        assert int(ck["epoch"]) == 1
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()


def test_a_file_size_limit_in_a_real_process_is_one_line_and_exit_1(tmp_path):
    out = tmp_path / "run"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    r = subprocess.run(
        [sys.executable, "-m", "minivae.train", *SMALL, "--epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "File too large" in line and "checkpoint.npz" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]


@pytest.mark.usefixtures("no_figures")
def test_interrupted_epoch_reports_the_same_train_loss_as_without_interruption(tmp_path, monkeypatch):
    args = SMALL + ["--batch-size", "32", "--epochs", "2"]
    assert run_main(args + ["--out", tmp_path / "straight"]) == 0
    real_forward, calls = VAE.forward, {"n": 0}

    def forward(self, x, eps=None):
        calls["n"] += 1
        if calls["n"] == 4:  # step 4 of 10 in epoch 1
            os.kill(os.getpid(), signal.SIGINT)
        return real_forward(self, x, eps)

    monkeypatch.setattr(VAE, "forward", forward)
    assert run_main(args + ["--out", tmp_path / "split"]) == 130
    monkeypatch.setattr(VAE, "forward", real_forward)
    with np.load(tmp_path / "split" / "checkpoint.npz") as ck:
        assert (int(ck["epoch"]), int(ck["step"]), int(ck["epoch/seen"])) == (0, 4, 128)
    assert run_main(["--resume", tmp_path / "split", "--quiet"]) == 0

    def rows(name):
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(rows("straight"), rows("split"), strict=True):
        for k in a:
            if k not in ("samples_per_s", "first_step_s"):  # times
                assert a[k] == b[k], k


@pytest.mark.usefixtures("no_figures")
def test_sigterm_in_training_saves_a_checkpoint_and_resumes(tmp_path, monkeypatch, capsys):
    real_forward, calls = VAE.forward, {"n": 0}

    def forward(self, x, eps=None):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_forward(self, x, eps)

    monkeypatch.setattr(VAE, "forward", forward)
    out = tmp_path / "run"
    assert run_main(SMALL + ["--epochs", "2", "--out", out]) == 128 + signal.SIGTERM
    assert "SIGTERM" in one_line(capsys.readouterr().err)
    monkeypatch.setattr(VAE, "forward", real_forward)
    assert run_main(["--resume", out, "--quiet"]) == 0


def test_ctrl_c_in_the_final_evaluation_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    from minivae import metrics

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)

    monkeypatch.setattr(metrics, "iw_log_likelihood", interrupted)
    out = tmp_path / "run"
    assert run_main(SMALL + ["--epochs", "1", "--out", out]) == 130
    line = one_line(capsys.readouterr().err)
    assert "final evaluation" in line and "epoch 1" in line and "--resume" in line
    assert not (out / "summary.json").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIVAE_MIRRORS", "http://127.0.0.1:9/")
    assert run_main(["--resume", out, "--quiet"]) == 0
    assert (out / "summary.json").exists()


@pytest.mark.usefixtures("no_figures")
def test_stale_temporary_files_are_removed_at_start(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    (out / ".checkpoint.npz.k1ll3d.tmp").write_bytes(b"x" * 5000)
    (out / ".notes.txt.tmp").write_text("someone else's")
    assert run_main(["--resume", out, "--epochs", "3"]) == 0
    assert "removed 1 temporary file" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob(".*")) == [".notes.txt.tmp"]


def _fake_data_dir(folder, n_train, n_test=40):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(n_train)
    for name, n in zip(data.MNIST_FILES, (n_train, n_train, n_test, n_test), strict=True):
        array = (
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            if "images" in name
            else (np.arange(n) % 10).astype(np.uint8)
        )
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.tobytes()))
    return folder


@pytest.mark.usefixtures("no_figures")
def test_data_dir_is_stored_absolute_and_can_be_relocated_on_resume(tmp_path, monkeypatch, capsys):
    _fake_data_dir(tmp_path / "work" / "digits", 100)
    monkeypatch.chdir(tmp_path / "work")
    out = tmp_path / "run"
    assert run_main(SMALL + ["--epochs", "1", "--data-dir", "digits", "--out", out]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data_dir"] == str(tmp_path / "work" / "digits")
    (tmp_path / "work" / "digits").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    assert run_main(["--resume", out, "--epochs", "2"]) == 2
    assert "--data-dir" in one_line(capsys.readouterr().err)
    _fake_data_dir(tmp_path / "other", 500)  # not the run's data: refused
    assert run_main(["--resume", out, "--epochs", "2", "--data-dir", tmp_path / "other"]) == 2
    assert "100 training digits" in one_line(capsys.readouterr().err)
    assert run_main(["--resume", out, "--epochs", "2", "--data-dir", "moved", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["data_dir"] == str(tmp_path / "moved")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_artifacts_get_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        files.atomic_write_text(tmp_path / "a.json", "{}")
        with open(tmp_path / "b.json", "w") as f:  # what the umask gives a new file
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_batch_larger_than_the_data_and_zero_epochs_are_refused(tmp_path, capsys):
    """Once they ran: --epochs 0 wrote an untrained model's figures and no checkpoint (a folder
    neither loadable nor resumable), and a batch larger than the digits took all of them at every
    step without a word. Now each is one line, exit 2, nothing written, as minivae.sweep says it."""
    assert run_main(SMALL + ["--batch-size", "1000", "--epochs", "1", "--out", tmp_path / "a"]) == 2
    assert "--batch-size 1000 is more than the 300 training digits" in capsys.readouterr().err
    assert run_main(SMALL + ["--epochs", "0", "--out", tmp_path / "b"]) == 2
    assert "--epochs 0 trains nothing" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# 5. Downloads
# --------------------------------------------------------------------------------------------


@pytest.fixture
def drip(monkeypatch):
    """A local server that sends any file one byte every 20 ms (for as long as the client reads)."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.02)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_a_dripping_mirror_meets_the_deadline_and_the_fallback_says_why(drip, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    with pytest.raises(data.DataError) as e:
        data.download_mnist(cache, mirrors=[drip], deadline=0.5)
    assert time.perf_counter() - t0 < 5
    assert "too slow" in str(e.value) and "MINIVAE_DOWNLOAD_DEADLINE" in str(e.value)
    assert not cache.exists() or not list(cache.iterdir())
    monkeypatch.setenv("MINIVAE_MIRRORS", drip)
    monkeypatch.setenv("MINIVAE_DOWNLOAD_DEADLINE", "0.3")
    with pytest.warns(UserWarning) as w:
        ds = data.load_mnist(cache_dir=cache, limit=10)
    assert "offline 5k sample" in ds.source and "too slow" not in ds.source  # said once, in the warning
    assert "download failed" in ds.note and len(ds.note) - len(str(cache)) <= 100
    assert len(w) == 1 and "too slow" in str(w[0].message)


@pytest.mark.parametrize(
    "name,value",
    [
        ("MINIVAE_MIRRORS", ","),
        ("MINIVAE_MIRRORS", " , "),
        ("MINIVAE_MIRRORS", "http://[::1"),  # urllib's "Invalid IPv6 URL" did not name the variable
        ("MINIVAE_MIRRORS", "http://127.0.0.1:9/, ftp://host/mnist/"),
        ("MINIVAE_MIRRORS", "mirror.example/mnist/"),
        ("MINIVAE_DOWNLOAD_DEADLINE", "soon"),
        ("MINIVAE_DOWNLOAD_DEADLINE", "-1"),
        ("MINIVAE_DOWNLOAD_DEADLINE", "inf"),
    ],
)
def test_a_bad_download_setting_names_the_variable(name, value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(name, value)
    with pytest.raises(data.DataError, match=name):
        data.load_mnist(cache_dir=tmp_path / "cache")
    assert run_main(SMALL + ["--out", tmp_path / "o"]) == 2
    assert name in one_line(capsys.readouterr().err)


def test_ctrl_c_during_a_download_is_one_line_and_leaves_nothing(drip, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "run"
    env = dict(os.environ, MINIVAE_DATA=str(cache), MINIVAE_MIRRORS=drip, no_proxy="*", NO_PROXY="*")
    proc = subprocess.Popen(
        [sys.executable, "-m", "minivae.train", *SMALL, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not (cache.exists() and list(cache.glob(".*.part"))):  # downloading now
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "start-up" in one_line(err)
    assert not list(cache.iterdir()) and not out.exists()


# --------------------------------------------------------------------------------------------
# The sweep's driver
# --------------------------------------------------------------------------------------------

SWEEP = [
    "--latents",
    "2",
    "--steps",
    "4",
    "--limit",
    "200",
    "--hidden",
    "8",
    "--iw-samples",
    "2",
    "--iw-examples",
    "20",
    "--backend",
    "numpy",
    "--quiet",
]


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A one-run study made by a real sweep (its worker pays the imports: ~10 s), for a template."""
    out = tmp_path_factory.mktemp("sweep") / "study"
    env = {"MINIVAE_DATA": str(out.parent / "cache"), "MINIVAE_MIRRORS": "http://127.0.0.1:9/"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.MonkeyPatch.context() as mp:
            from minivae import plots

            mp.setattr(plots, "study_figures", lambda *a, **k: None)
            assert sweep.main(SWEEP + ["--out", str(out)]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    row = json.loads((out / "results.jsonl").read_text())
    return out, row


def fake_execute(template, diverged=False):
    """In place of the worker pool: each run 'finishes' at once with the template's numbers."""
    done = []

    def execute(todo, jobs, client):
        for cfg in todo:
            done.append(cfg.latent)
            row = dict(template, latent=cfg.latent, seed=cfg.seed, settings=cfg.settings)
            if diverged:
                row.update(diverged="loss nan at step 2", test_loss=float("nan"), curve=[])
            src = pathlib.Path(cfg.out) / "runs" / cfg.replace(latent=2, seed=0).file()
            if src.exists() and cfg.latent != 2:
                shutil.copy(src, src.parent / cfg.file())
            yield cfg, row

    return execute, done


def test_sweep_sets_aside_corrupt_results_and_retrains_those_runs(one_run, tmp_path, monkeypatch, capsys):
    made, template = one_run
    out = pathlib.Path(shutil.copytree(made, tmp_path / "study"))
    args = SWEEP[:1] + ["2,3,4"] + SWEEP[2:] + ["--out", str(out)]
    execute, done = fake_execute(template)
    monkeypatch.setattr(sweep, "_execute", execute)
    from minivae import plots

    monkeypatch.setattr(plots, "study_figures", lambda *a, **k: None)  # not what is tested here
    assert sweep.main(args) == 0  # Z = 3 and 4 are new
    assert sorted(done) == [3, 4]
    lines = (out / "results.jsonl").read_text().splitlines()
    z3 = next(i for i, x in enumerate(lines) if '"latent": 3,' in x)
    lines[z3] = lines[z3].replace('"test_loss": ', '"test_loss": "oops", "was": ')
    (out / "results.jsonl").write_text("\n".join(lines) + '\n{"model": "vae", "lat\n')
    broken = out / "runs" / study.run_file(dict(template, latent=4))
    broken.write_bytes(b"PK\x03\x04 broken")
    capsys.readouterr()
    done.clear()
    assert sweep.main(args) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("trained again") == 3, err
    assert f"{broken.name} is unreadable" in err and "test_loss is 'oops'" in err
    assert sorted(done) == [3, 4]  # Z = 2 was fine and is kept
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["latent"] for r in rows) == [2, 3, 4]
    assert all(isinstance(r["test_loss"], float) for r in rows)
    assert len((out / "results.jsonl.corrupt").read_text().splitlines()) == 3  # nothing lost
    assert (out / "report.md").exists()


def test_a_sweep_that_cannot_write_its_results_says_so_in_one_line(one_run, tmp_path, monkeypatch, capsys):
    _, template = one_run
    monkeypatch.setattr(sweep, "_execute", fake_execute(template)[0])

    def full(path, rows):
        raise files.WriteError(f"cannot write {path}: {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(sweep, "write_jsonl", full)
    assert sweep.main(SWEEP + ["--out", str(tmp_path / "study")]) == 1
    assert "No space left on device" in one_line(capsys.readouterr().err)


def test_a_sweep_whose_every_run_diverged_still_writes_its_report(one_run, tmp_path, monkeypatch, capsys):
    _, template = one_run
    out = tmp_path / "diverged"
    monkeypatch.setattr(sweep, "_execute", fake_execute(template, diverged=True)[0])
    assert sweep.main(SWEEP[:1] + ["2,3"] + SWEEP[2:] + ["--lr", "1e9", "--out", str(out)]) == 0
    assert "every run diverged" in one_line(capsys.readouterr().err)
    report = (out / "report.md").read_text()
    assert "| vae | 8 | 2 |" in report and "| vae | 8 | 3 |" in report


def test_ctrl_c_of_a_sweep_stops_its_workers_and_says_what_is_saved(tmp_path):
    out = tmp_path / "study"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = [
        "--latents",
        "2,3,4,5",
        "--steps",
        "100000",
        "--limit",
        "200",
        "--hidden",
        "8",
        "--backend",
        "numpy",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "minivae.sweep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 90
    while not list((out / "runs").glob("*.partial.json")) if (out / "runs").exists() else True:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # the workers get up to 30 s each to clean up
    assert proc.returncode == 130, err
    assert "interrupted" in one_line(err) and "0 of 4" in err
    # No progress file and no temporary file are left; a run that got past 2,000 steps keeps its
    # checkpoint (runs/<tag>.resume.npz), from which the next sweep continues it.
    assert all(p.name.endswith(".resume.npz") for p in (out / "runs").iterdir())
    assert not (out / "results.jsonl").exists()


# --------------------------------------------------------------------------------------------
# Files that cannot be read as files: a FIFO where a file is read, JSON nested too deeply
# --------------------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON, too deep for Python's parser (RecursionError)


@pytest.fixture
def alarm():
    """A read that blocks (a FIFO with no writer) fails the test after 20 s instead of hanging it."""

    def ring(signum, frame):
        raise TimeoutError("blocked reading a FIFO")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_json_nested_too_deeply_is_a_decode_error_where_it_is_read(finished, tmp_path, capsys):
    from kernels import gemm_choice

    with pytest.raises(json.JSONDecodeError):
        files.parse_json(DEEP)
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"a": 1}\n' + DEEP + "\n")
    with pytest.raises(files.JsonlError, match="line 2"):
        files.read_jsonl(rows)
    bad = []
    assert files.read_jsonl(rows, on_bad=lambda e, text: bad.append(e)) == [{"a": 1}] and len(bad) == 1
    table = tmp_path / "table.json"
    table.write_text(DEEP)
    with pytest.warns(UserWarning, match="cannot read the GEMM choice table"):
        assert gemm_choice.load(table) == frozenset()
    gemm_choice.save({"k": {"pick": "openblas"}}, table)  # an unreadable table is replaced
    assert json.loads(table.read_text()) == {"k": {"pick": "openblas"}}
    run = copy_run(finished, tmp_path)
    edit_checkpoint(run, config=np.array(DEEP))
    assert run_main(["--resume", run]) == 2
    assert "config is corrupt" in one_line(capsys.readouterr().err)


def test_a_fifo_where_a_file_is_read_is_refused_not_waited_on(finished, tmp_path, capsys, alarm):
    from kernels import gemm_choice
    from minivae import checkpoint

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        files.read_jsonl(fifo)
    with pytest.raises(checkpoint.CheckpointError, match="not a regular file"):
        checkpoint.read(fifo)
    with pytest.warns(UserWarning, match="not a regular file"):
        assert gemm_choice.load(fifo) == frozenset()
    for name in ("metrics.jsonl", "checkpoint.npz"):
        run = copy_run(finished, tmp_path, name=f"run-{name}")
        (run / name).unlink()
        os.mkfifo(run / name)
        assert run_main(["--resume", run, "--epochs", "3"]) == 2, name
        assert "not a regular file" in one_line(capsys.readouterr().err), name
