"""Fixtures shared by several test files."""

import pytest


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty data cache and a mirror that refuses connections: the offline sample is used."""
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIVAE_MIRRORS", "http://127.0.0.1:9/")


def pytest_configure(config):
    """No test reads this machine's GEMM choice table (kernels.gemm_choice): every product is
    OpenBLAS's unless a test points MINIVAE_GEMM_CHOICE at a table of its own."""
    import os
    import tempfile

    os.environ["MINIVAE_GEMM_CHOICE"] = os.path.join(tempfile.mkdtemp(prefix="minivae-"), "no-table.json")


@pytest.fixture
def never_trains(monkeypatch):
    """python -m minivae.linear's training, made to fail the test if it starts: the checks must
    come first."""
    from minivae import linear

    def fit(*a, **k):
        raise AssertionError("training started before the checks were done")

    monkeypatch.setattr(linear, "fit", fit)
