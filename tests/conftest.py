"""Fixtures shared by every test file. Stage-specific helpers live in their own test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from candidfashion.config import Settings, get_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose data dir is a fresh temporary folder.

    Set through the environment so that code calling ``get_settings()`` itself (the CLI, the
    app factory) sees the same folder; the cached instance is dropped before and after.
    """
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("CANDIDFASHION_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def ccp_dir() -> Path:
    """The CCP data set folder; skips the test when it is not on this machine."""
    path = get_settings().ccp_dir
    if not (path / "photos").is_dir():
        pytest.skip(
            f"CCP data set not found: {path / 'photos'} is missing "
            "(set CANDIDFASHION_CCP_DIR to a folder with photos/ and annotations/)"
        )
    return path
