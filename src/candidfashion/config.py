"""All settings in one place, overridable by ``CANDIDFASHION_*`` env variables and CLI flags."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
#: Shipped models live in the repository's ``models/`` folder; an installed wheel has none.
REPO_MODELS_DIR = PACKAGE_DIR.parent.parent / "models"


def _default_data_dir() -> Path:
    local = Path.cwd() / "data"
    return local if local.is_dir() else Path.home() / ".candidfashion"


class Settings(BaseSettings):
    """Runtime configuration. Every field reads ``CANDIDFASHION_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="CANDIDFASHION_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    #: Parser model source: a path, any fsspec URI (``s3://...``) or ``models:/name/version``.
    parser_model: str = str(REPO_MODELS_DIR / "parser.onnx")
    #: Also parse the mirrored photo and average the scores: about +1 garment mIoU point on
    #: the CCP val split for about twice the parse time, so off by default.
    parser_flip: bool = False
    embedder_model: str = str(REPO_MODELS_DIR / "embedder.onnx")
    #: Vector store: ``faiss://<dir>`` (embedded default), ``milvus-lite://<file.db>`` or
    #: ``http(s)://host:19530`` for a Milvus server. Empty means ``faiss://<data_dir>/index``.
    vector_store: str = ""
    catalog_db: str = ""  # empty means <data_dir>/catalog.sqlite
    #: Images a catalog may reference are confined to this folder (empty: the catalog file's own).
    catalog_base_dir: str = ""
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    max_upload_bytes: int = 15 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    api_key: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 2  # ONNX Runtime intra-op threads per session
    look_ttl_s: int = 900
    look_cache_size: int = 200
    log_json: bool = False
    log_level: str = "INFO"
    mlflow_tracking_uri: str = ""  # empty means sqlite:///<data_dir>/mlflow.db
    ccp_dir: Path = PACKAGE_DIR.parent.parent.parent / "shared" / "data" / "ccp"

    def resolved_catalog_db(self) -> Path:
        return Path(self.catalog_db) if self.catalog_db else self.data_dir / "catalog.sqlite"

    def resolved_vector_store(self) -> str:
        return self.vector_store or f"faiss://{self.data_dir / 'index'}"

    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
