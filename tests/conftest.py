"""Fixtures shared by several test files."""

import pytest


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty data cache and a mirror that refuses connections: the offline sample is used."""
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("MINIVAE_MIRRORS", "http://127.0.0.1:9/")
