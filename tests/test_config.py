"""Settings read ``CANDIDFASHION_*`` environment variables and derive paths from the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from candidfashion.config import Settings, get_settings


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CANDIDFASHION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CANDIDFASHION_PORT", "9123")
    monkeypatch.setenv("CANDIDFASHION_LOG_JSON", "true")
    monkeypatch.setenv("CANDIDFASHION_ALLOW_REMOTE_IMAGES", "1")
    monkeypatch.setenv("CANDIDFASHION_VECTOR_STORE", "milvus-lite://" + str(tmp_path / "m.db"))
    s = Settings()
    assert s.data_dir == tmp_path
    assert s.port == 9123
    assert s.log_json is True
    assert s.allow_remote_images is True
    assert s.resolved_vector_store() == f"milvus-lite://{tmp_path / 'm.db'}"


def test_paths_derive_from_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("VECTOR_STORE", "CATALOG_DB", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(f"CANDIDFASHION_{name}", raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.resolved_catalog_db() == tmp_path / "catalog.sqlite"
    assert s.resolved_vector_store() == f"faiss://{tmp_path / 'index'}"
    assert s.resolved_mlflow_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_env_name_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("candidfashion_threads", "3")
    assert Settings().threads == 3


def test_bad_env_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDIDFASHION_PORT", "eighty")
    with pytest.raises(ValidationError, match="port") as info:
        Settings()
    assert isinstance(info.value, ValueError)


def test_settings_fixture_isolates_data_dir(settings: Settings, tmp_path: Path) -> None:
    assert settings.data_dir == tmp_path / "data"
    assert settings.data_dir.is_dir()
    # Code that calls get_settings() itself sees the same folder.
    assert get_settings() is settings
