"""Faults of the commands beside the main job (issue #26): each meets the main job's standard.

Bad input is one line on stderr and exit code 2, a failed run one line and exit 1, never a
traceback; every check comes before the first training step; nothing is left half-written.

1. a stdout that cannot be written (a pipe closed early, a full disk) does not stop training;
"""

import json
import os
import subprocess
import sys

import pytest
from test_train import SMALL as TRAIN_SMALL

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
