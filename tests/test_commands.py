"""What a new user meets at the command line.

1. every command's --help marks required options and writes defaults in one style; --version;
   one error prefix, ``minivae.<command>: error:``;
2. the advice after a divergence is a command that runs;
3. resuming a finished run says so and touches nothing;
4. train and sweep refuse each other's output folders.
"""

import argparse
import importlib
import json
import re
import shlex

import numpy as np
import pytest
from test_train import SMALL

from minivae import cli, sweep, train
from minivae.vae import VAE

COMMANDS = ["train", "sweep", "explore", "linear", "identity", "mechanism"]
TINY = SMALL + ["--limit", "300"]

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache


def run_main(module, argv):
    try:
        return module.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit (--help, --version)
        return e.code


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# 1. Help, version, error prefix
# --------------------------------------------------------------------------------------------


def parser_of(command, monkeypatch):
    """The parser a command builds, caught as it parses."""
    caught = []

    def parse_args(self, *a, **k):
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(cli.Parser, "parse_args", parse_args)
    with pytest.raises(SystemExit):
        importlib.import_module(f"minivae.{command}").main([])
    return caught[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_marks_required_options_and_writes_defaults_in_one_style(command, monkeypatch):
    p = parser_of(command, monkeypatch)
    assert any("--version" in a.option_strings for a in p._actions)
    for a in p._actions:
        if a.help in (None, argparse.SUPPRESS) or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = a.option_strings[-1] if a.option_strings else a.dest
        text = a.help % {"prog": p.prog, "default": a.default}
        assert len(re.findall(r"\(default\b", text)) <= 1, (name, text)
        assert not re.search(r"default:|, default\)|\(default\)|\bdefault\)", text), (name, text)
        if a.required and a.option_strings:  # (a positional is required by its place)
            assert text.endswith("(required)"), (name, text)
        elif a.default not in (None, False):
            shown = cli.value_text(a.default)
            assert text.endswith(f"(default {shown})"), (name, text)
            if a.choices is None:  # (a choice may be named in parentheses: "(dynamic)")
                assert f"({shown})" not in text, (name, text)  # no second, hand-written copy


@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_what_every_argument_is_in_plain_text(command, monkeypatch):
    p = parser_of(command, monkeypatch)
    assert p.description and not re.search(r"``|:func:|:class:|:mod:", p.description), p.description
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or a.help == argparse.SUPPRESS:
            continue
        name = a.option_strings[-1] if a.option_strings else a.dest
        said = re.sub(r"\((default [^)]*|required)\)$", "", (a.help or "").strip()).strip()
        assert len(said) > 3, (name, a.help)  # more than its default


@pytest.mark.parametrize("command", COMMANDS)
def test_version_on_every_command(command, capsys):
    module = importlib.import_module(f"minivae.{command}")
    assert run_main(module, ["--version"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("0.1.0") and f"minivae.{command}" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_one_error_prefix_on_every_command(command, capsys):
    module = importlib.import_module(f"minivae.{command}")
    assert run_main(module, ["--no-such-option"]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"minivae.{command}: error: ")


def test_a_usage_error_found_after_parsing_has_the_same_prefix(tmp_path, capsys):
    assert run_main(train, ["--resume", tmp_path / "nothing"]) == 2
    assert one_line(capsys.readouterr().err).startswith("minivae.train: error: ")
    assert run_main(sweep, ["--steps", "3", "--epochs", "2", "--out", tmp_path / "s"]) == 2
    assert one_line(capsys.readouterr().err).startswith("minivae.sweep: error: ")


# --------------------------------------------------------------------------------------------
# 2. After a divergence
# --------------------------------------------------------------------------------------------


def suggested(err):
    """The argv of the command a divergence message suggests."""
    line = one_line(err)
    command = line.split("to train again at a tenth of the rate: ", 1)[1]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "minivae.train"], words
    return words[3:]


@pytest.mark.parametrize("nan_at", [2, 7])  # before the first checkpoint; in epoch 2 (5 steps an epoch)
def test_the_advice_after_a_divergence_is_a_command_that_runs(nan_at, tmp_path, monkeypatch, capsys):
    real, calls = VAE.forward, [0]

    def forward(self, x, eps=None):
        calls[0] += 1
        loss = real(self, x, eps)
        return float("nan") if calls[0] == nan_at else loss

    monkeypatch.setattr(VAE, "forward", forward)
    out = tmp_path / "run"
    assert run_main(train, TINY + ["--epochs", "2", "--lr", "0.002", "--out", out]) == 1
    monkeypatch.setattr(VAE, "forward", real)
    argv = suggested(capsys.readouterr().err)
    assert argv[argv.index("--lr") + 1] == "0.0002" and "--overwrite" in argv
    assert run_main(train, argv) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.0002 and (config["latent"], config["hidden"], config["limit"]) == (6, [24], 300)
    with np.load(out / "checkpoint.npz") as ck:
        assert int(ck["epoch"]) == 2


def test_a_real_divergence_suggests_a_retry_that_is_accepted(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(train, TINY + ["--epochs", "1", "--lr", "1e9", "--out", out]) == 1
    argv = suggested(capsys.readouterr().err)
    assert argv[argv.index("--lr") + 1] == "1e8"
    assert run_main(train, argv) == 1  # trained (and diverged again): not refused (2)
    assert "loss became" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------
# 3. A finished run
# --------------------------------------------------------------------------------------------


def test_resuming_a_complete_run_says_so_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(train, TINY + ["--epochs", "1", "--out", out]) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    for argv in (["--resume", out], ["--resume", out, "--quiet"], ["--resume", out, "--epochs", "1"]):
        assert run_main(train, argv) == 0
        captured = capsys.readouterr()
        assert captured.err == ""
        assert "complete" in one_line(captured.out)
        assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    # A run stopped in its final evaluation (no summary.json yet) is finished by --resume, not refused.
    (out / "summary.json").unlink()
    assert run_main(train, ["--resume", out, "--quiet"]) == 0
    assert (out / "summary.json").exists()


# --------------------------------------------------------------------------------------------
# 4. Each command's folders are its own
# --------------------------------------------------------------------------------------------

SWEEP_TINY = ["--latents", "3", "--steps", "2", "--hidden", "8", "--limit", "300", "--iw-samples", "2"]
SWEEP_TINY += ["--iw-examples", "20", "--backend", "numpy", "--quiet"]


def test_train_refuses_a_sweep_folder_and_sweep_a_run_folder(tmp_path, capsys, monkeypatch):
    from minivae import plots

    monkeypatch.setattr(plots, "study_figures", lambda *a, **k: None)
    study, run = tmp_path / "study", tmp_path / "run"
    assert run_main(sweep, SWEEP_TINY + ["--out", study]) == 0
    assert run_main(train, TINY + ["--epochs", "1", "--out", run]) == 0
    capsys.readouterr()
    snapshot = {p: p.read_bytes() for folder in (study, run) for p in folder.rglob("*") if p.is_file()}
    for argv in (["--out", study], ["--out", study, "--overwrite"]):
        assert run_main(train, TINY + ["--epochs", "1"] + argv) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith("minivae.train: error: ") and "holds a sweep" in line
    assert run_main(train, ["--resume", study]) == 2
    assert "holds a sweep" in one_line(capsys.readouterr().err)
    assert run_main(sweep, SWEEP_TINY + ["--out", run]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("minivae.sweep: error: ") and "holds a training run" in line
    assert {p: p.read_bytes() for folder in (study, run) for p in folder.rglob("*") if p.is_file()} == snapshot


def test_a_warning_a_command_shows_is_one_line_with_its_name(tmp_path):
    import subprocess
    import sys

    code = (
        "import warnings; from minivae import cli\n"
        "def run(args):\n"
        "    warnings.warn('the table is unreadable; using OpenBLAS')\n"
        "    return 0\n"
        "raise SystemExit(cli.run_command('minivae.train', run, lambda argv: None))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr.splitlines() == ["minivae.train: warning: the table is unreadable; using OpenBLAS"]
