"""The main job end to end: artifacts, resume, Ctrl-C, the non-finite guard, bad input."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from official_mnist import OFFICIAL_MNIST, have

from minivae import train

ARTIFACTS = [
    "metrics.jsonl",
    "config.json",
    "checkpoint.npz",
    "reconstructions.png",
    "samples.png",
    "kl_per_dim.png",
    "loss_curve.png",
]
METRIC_FIELDS = {
    "epoch",
    "train_loss",
    "test_loss",
    "test_recon",
    "test_kl",
    "active_units",
    "directions",
    "participation_ratio",
    "samples_per_s",
}
SMALL = [
    "--latent",
    "6",
    "--hidden",
    "24",
    "--batch-size",
    "64",
    "--iw-samples",
    "4",
    "--iw-examples",
    "50",
    "--backend",
    "numpy",
    "--quiet",
]


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache


def run_main(argv):
    try:
        return train.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        return e.code


def params_of(out):
    with np.load(out / "checkpoint.npz") as ck:
        return {k: ck[k] for k in ck.files if k.startswith("param/") or k.startswith("opt/")}


def test_cli_end_to_end_writes_every_artifact(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(
        [sys.executable, "-m", "minivae.train", *SMALL[:-1], "--limit", "256", "--epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "offline 5k sample" in r.stdout  # says which data it used, and under it why not all of MNIST:
    assert "\n  train-images-idx3-ubyte.gz missing (+3 more), download failed; cache " in r.stdout
    assert "Errno" not in r.stdout + r.stderr
    assert "log-likelihood" in r.stdout and str(out) in r.stdout
    for name in ARTIFACTS:
        assert (out / name).stat().st_size > 0, name
    for name in ARTIFACTS:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == METRIC_FIELDS | {"first_step_s"}  # this process's first step
    assert rows[0]["first_step_s"] > 0 and "samples/s (first step " in r.stdout
    assert rows[0]["epoch"] == 1 and 0 < rows[0]["test_loss"] < 800 and rows[0]["samples_per_s"] > 0
    assert 0 <= rows[0]["active_units"] <= 6 and 0 <= rows[0]["directions"] <= 6
    assert 0 <= rows[0]["participation_ratio"] <= 6
    config = json.loads((out / "config.json").read_text())
    assert config["latent"] == 6 and config["hidden"] == [24] and config["limit"] == 256
    with np.load(out / "checkpoint.npz") as ck:
        assert int(ck["epoch"]) == 1 and ck["param/enc1.W"].shape == (24, 12)
    assert not list(out.glob("*.tmp")), "temporary files left behind"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_resume_gives_the_same_parameters_bit_for_bit(tmp_path):
    common = SMALL + ["--limit", "300"]
    assert run_main(common + ["--epochs", "2", "--out", tmp_path / "straight"]) == 0
    assert run_main(common + ["--epochs", "1", "--out", tmp_path / "split"]) == 0
    assert run_main(["--resume", tmp_path / "split", "--epochs", "2", "--quiet"]) == 0
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_ctrl_c_saves_a_checkpoint_and_resume_matches(tmp_path):
    out = tmp_path / "run"
    args = SMALL[:-1] + ["--limit", "2000", "--batch-size", "16", "--epochs", "3"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "minivae.train", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:  # wait until training is under way (epoch 1 done)
        if line.startswith("epoch"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    with np.load(out / "checkpoint.npz") as ck:
        assert (int(ck["epoch"]), int(ck["step"])) != (3, 0)
    # Continue to the end: the same parameters as a run that was never interrupted.
    assert run_main(["--resume", out, "--quiet"]) == 0
    assert run_main(args[:-1] + ["3", "--quiet", "--out", tmp_path / "straight"]) == 0
    a, b = params_of(out), params_of(tmp_path / "straight")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_forward = train.VAE.forward
    calls = {"n": 0}

    def forward(self, x, eps=None):
        calls["n"] += 1
        loss = real_forward(self, x, eps)
        return float("nan") if calls["n"] == 7 else loss  # step 2 of epoch 2

    monkeypatch.setattr(train.VAE, "forward", forward)
    out = tmp_path / "run"
    code = run_main(SMALL + ["--limit", "300", "--epochs", "3", "--out", out])
    assert code == 1
    err = capsys.readouterr().err
    assert "epoch 2, step 2" in err and "nan" in err
    with np.load(out / "checkpoint.npz") as ck:
        assert int(ck["epoch"]) == 1 and np.isfinite(ck["param/enc0.W"]).all()


def _corrupt_dir(tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    return d


@pytest.mark.parametrize(
    "bad",
    [
        ["--latent", "0"],
        ["--latent", "-3"],
        ["--latent", "abc"],
        ["--batch-size", "0"],
        ["--lr", "-0.001"],
        ["--lr", "nan"],
        ["--backend", "bogus"],
        ["--hidden", "512,x"],
        ["--data-dir", "MISSING"],
        ["--data-dir", "CORRUPT"],
        ["--resume", "MISSING"],
        ["--epochs", "0"],
        ["--limit", "50", "--batch-size", "64"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(bad, tmp_path, capsys):
    bad = [
        str(tmp_path / "nope") if b == "MISSING" else str(_corrupt_dir(tmp_path)) if b == "CORRUPT" else b for b in bad
    ]
    out = tmp_path / "out"
    code = run_main(bad + ["--out", out, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err, err
    assert "Traceback" not in err
    assert not out.exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "minivae.train", "--latent", "abc", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "latent" in r.stderr
    assert not (tmp_path / "out").exists()


def test_official_test_split_from_a_data_dir(tmp_path):
    shared = OFFICIAL_MNIST
    if not have("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        pytest.skip(f"the official MNIST test split is not in {shared}")
    out = tmp_path / "run"
    assert run_main(SMALL + ["--limit", "128", "--epochs", "1", "--data-dir", shared, "--out", out]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "10,000" in summary["data"] and summary["final"]["test_loss"] > 0


def test_quiet_still_says_which_data_in_one_line(tmp_path, capsys):
    assert run_main(SMALL + ["--limit", "64", "--epochs", "1", "--out", tmp_path / "run"]) == 0  # SMALL has --quiet
    printed = capsys.readouterr()
    assert printed.out.startswith("data: MNIST: first 64 of 4,500 training digits from the offline 5k sample")
    assert len(printed.out.splitlines()) == 1 and printed.err == ""


def test_the_loss_curve_of_one_epoch_shows_its_points(tmp_path, monkeypatch):
    from minivae import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    row = {"epoch": 1, "train_loss": 200.0, "test_loss": 180.0, "test_recon": 170.0}
    plots.loss_curve(tmp_path / "loss_curve.png", [row])
    ax = drawn[0].axes[0]
    assert list(ax.get_xticks()) == [1]  # not 0.96 … 1.04
    assert all(line.get_marker() not in (None, "", "None") for line in ax.get_lines())  # each point visible
    plots.loss_curve(tmp_path / "loss_curve.png", [row, dict(row, epoch=2)])
    assert drawn[1].axes[0].get_lines()[2].get_marker() in (None, "", "None")  # a line again: dotted
