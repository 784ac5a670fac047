"""The HTTP API and web app.

``create_app(settings)`` builds a FastAPI app that loads the models once (at startup, in a
worker thread), keeps recent looks in a bounded TTL cache, runs all CPU work off the event
loop under a capacity limiter, and answers every error with one JSON shape::

    {"error": {"code": "too_large", "message": "..."}}

``run_server(settings)`` starts uvicorn; with ``workers > 1`` each worker process builds its
own app from the environment (settings are passed on as ``CANDIDFASHION_*`` variables).
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import pickle
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candidfashion import __version__
from candidfashion.config import PACKAGE_DIR, Settings
from candidfashion.feedback import FeedbackError, FeedbackStore
from candidfashion.imageio import ImageError
from candidfashion.search import (
    MAX_K,
    Look,
    Match,
    SearchError,
    SearchFilters,
    ShopTheLook,
    working_image,
)
from candidfashion.taxonomy import CLASS_COLOURS, CLASSES, ITEM_CLASSES

log = logging.getLogger(__name__)

API = "/api/v1"
STATIC_DIR = PACKAGE_DIR / "web" / "static"
#: Room for the multipart envelope and small form fields around the image itself.
MULTIPART_OVERHEAD = 64 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
ACCEPTED_UPLOAD_TYPES = ("image/", "application/octet-stream")

#: ImageError code -> HTTP status.
IMAGE_ERROR_STATUS = {
    "empty": 400,
    "truncated": 400,
    "too_small": 400,
    "not_found": 400,
    "not_an_image": 415,
    "too_large": 413,
    "too_many_pixels": 413,
}
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "not_ready",
}

T = TypeVar("T")


# --- errors ------------------------------------------------------------------------------


class APIError(Exception):
    """An error with a status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BodyTooLarge(StarletteHTTPException):
    """Raised from inside ``receive`` when a streamed body passes the cap.

    An HTTPException so that FastAPI's body parsing re-raises it unchanged.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the upload is larger than the {limit:,} byte limit")


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# --- middleware (pure ASGI, so they see every request including static files) -------------


class UploadLimitMiddleware:
    """Refuses request bodies over the cap: by Content-Length before reading anything, and
    by counting bytes as they stream in for chunked uploads that do not announce a length."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_body
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "bad_request", "invalid Content-Length")(
                        scope, receive, send
                    )
                    return
                if declared > limit:
                    message = f"the upload is {declared:,} bytes, over the {limit:,} byte limit"
                    await error_response(413, "too_large", message)(scope, receive, send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as err:
            if started:
                raise
            await error_response(413, "too_large", str(err.detail))(scope, receive, send)


class MetricsMiddleware:
    """Request counts by route template and status, and latency histograms."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            # Route templates only, so ids in URLs cannot blow up the label set.
            label = "static" if path == "" or path == "/" else (path or "unmatched")
            method = scope.get("method", "GET")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(elapsed)


class Metrics:
    def __init__(self) -> None:
        # One registry per app, so tests can build several apps in one process.
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "candidfashion_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "candidfashion_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.stages = Histogram(
            "candidfashion_stage_seconds",
            "Time spent in each model stage of a look (parse, items, embed, search).",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.items = Histogram(
            "candidfashion_items_per_look",
            "Items found per photo.",
            buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 15),
            registry=self.registry,
        )
        self.looks_cached = Gauge(
            "candidfashion_looks_cached", "Looks held in the cache.", registry=self.registry
        )
        self.engine_ready = Gauge(
            "candidfashion_models_loaded", "1 when the models are loaded.", registry=self.registry
        )


# --- the look cache ----------------------------------------------------------------------


@dataclass
class CachedLook:
    look: Look
    photo: bytes  # the upload as received: small, decoded again only for overlays
    created: float = field(default_factory=time.monotonic)
    overlay_png: bytes | None = None


class SharedLookStore:
    """Looks shared between the worker processes of one server (``workers > 1``).

    A refine request may reach another worker than the upload did, so each look is also
    written, compressed, to SQLite in the data folder. Only this server's own processes
    write the file, which is why reading it back with pickle is acceptable.
    """

    def __init__(self, path: Path, ttl_s: float, max_rows: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.max_rows = max(1, max_rows)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS looks (id TEXT PRIMARY KEY, created REAL, data BLOB)"
        )
        self._conn.commit()

    def put(self, entry: CachedLook) -> None:
        blob = zlib.compress(pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL), 1)
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO looks (id, created, data) VALUES (?, ?, ?)",
                (entry.look.id, now, blob),
            )
            self._conn.execute("DELETE FROM looks WHERE created < ?", (now - self.ttl_s,))
            self._conn.execute(
                "DELETE FROM looks WHERE id NOT IN "
                "(SELECT id FROM looks ORDER BY created DESC LIMIT ?)",
                (self.max_rows,),
            )
            self._conn.commit()

    def get(self, look_id: str) -> CachedLook | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT created, data FROM looks WHERE id = ?", (look_id,)
            ).fetchone()
        if row is None or time.time() - row[0] > self.ttl_s:
            return None
        entry: CachedLook = pickle.loads(zlib.decompress(row[1]))
        # Age it correctly on this process's monotonic clock.
        entry.created = time.monotonic() - (time.time() - row[0])
        return entry


class LookCache:
    """Recent looks by id, dropped after ``ttl_s`` or when more than ``max_size`` are held.

    With a :class:`SharedLookStore`, looks made by other worker processes are found too.
    """

    def __init__(self, ttl_s: float, max_size: int, shared: SharedLookStore | None = None):
        self.ttl_s = ttl_s
        self.max_size = max(1, max_size)
        self.shared = shared
        self._items: OrderedDict[str, CachedLook] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._items:
            oldest = next(iter(self._items.values()))
            if now - oldest.created <= self.ttl_s:
                break
            self._items.popitem(last=False)

    def _remember(self, entry: CachedLook) -> None:
        with self._lock:
            self._expire(time.monotonic())
            self._items[entry.look.id] = entry
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)

    def put(self, entry: CachedLook) -> None:
        self._remember(entry)
        if self.shared is not None:
            self.shared.put(entry)

    def get(self, look_id: str) -> CachedLook | None:
        with self._lock:
            self._expire(time.monotonic())
            entry = self._items.get(look_id)
        if entry is None and self.shared is not None:
            entry = self.shared.get(look_id)
            if entry is not None:
                self._remember(entry)
        return entry

    def __len__(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._items)


# --- request models ----------------------------------------------------------------------


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


class FilterFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, ge=1, le=MAX_K)
    category: str | None = Field(None, max_length=40)
    colour: str | None = Field(None, max_length=40)
    min_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_price: float | None = Field(None, ge=0, allow_inf_nan=False)
    in_stock: bool | None = None
    keyword: str | None = Field(None, max_length=200)

    @field_validator("*", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _blank_to_none(value)

    def filters(self) -> SearchFilters:
        return SearchFilters(
            category=self.category,
            colour=self.colour,
            min_price=self.min_price,
            max_price=self.max_price,
            in_stock=self.in_stock,
            keyword=self.keyword,
        )


class LookForm(FilterFields):
    """Form fields sent with a photo to ``POST /looks``."""


class ItemSearchFields(FilterFields):
    look_id: str | None = Field(None, max_length=64)
    item: int | None = Field(None, ge=0)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    look_id: str = Field(..., max_length=64)
    item: int = Field(..., ge=0)
    verdict: Literal["good", "wrong", "outline_wrong"]
    product_id: str | None = Field(None, max_length=200)


def _validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False, include_context=False)) from err


# --- state -------------------------------------------------------------------------------


class AppState:
    """Everything the routes share: settings, the engine (models + stores), caches, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        shared = None
        if settings.workers > 1:
            shared = SharedLookStore(
                settings.data_dir / "looks.sqlite",
                settings.look_ttl_s,
                settings.look_cache_size * settings.workers,
            )
        self.looks = LookCache(settings.look_ttl_s, settings.look_cache_size, shared)
        self.engine: ShopTheLook | None = None
        self.engine_error: str | None = None
        self.feedback: FeedbackStore | None = None
        self._load_lock = threading.Lock()
        # ONNX Runtime already uses ``threads`` cores per call; more concurrent calls than
        # cores / threads only add contention, so the rest wait their turn in line.
        cores = os.cpu_count() or 1
        self.max_concurrent = max(1, cores // max(1, settings.threads))
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.max_concurrent)
        return self._limiter

    def load(self) -> None:
        """Load the models and open the stores once; a failure is kept for /readyz."""
        with self._load_lock:
            if self.engine is not None:
                return
            try:
                self.engine = ShopTheLook.from_settings(self.settings)
                self.engine_error = None
                self.metrics.engine_ready.set(1)
            except (ValueError, OSError) as err:  # a missing or mismatched model or store
                log.error("could not load the models or open the catalog: %s", err)
                self.engine_error = f"{type(err).__name__}: {err}"
            except Exception as err:  # reported by /readyz and 503s, not fatal to the server
                log.exception("could not load the models or open the catalog")
                self.engine_error = f"{type(err).__name__}: {err}"
            if self.feedback is None:
                self.feedback = FeedbackStore.from_settings(self.settings)

    def require_engine(self) -> ShopTheLook:
        if self.engine is None:
            self.load()
        if self.engine is None:
            raise APIError(503, "not_ready", f"the models are not loaded: {self.engine_error}")
        return self.engine

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work in a worker thread, at most ``max_concurrent`` at once."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)


def _state(request: Request) -> AppState:
    return request.app.state.cf  # type: ignore[no-any-return]


# --- serialisation -----------------------------------------------------------------------


def _safe_url(url: str | None) -> str | None:
    # Only web links reach the page: a javascript: URL in a catalog must not become a link.
    if url and url.lower().startswith(("http://", "https://")):
        return url
    return None


def product_json(product: Any) -> dict[str, Any]:
    return {
        "id": product.id,
        "title": product.title,
        "price": product.price,
        "currency": product.currency,
        "url": _safe_url(product.url),
        "image_url": f"{API}/products/{product.id}/image",
        "category": product.category,
        "brand": product.brand,
        "colour": product.colour,
        "in_stock": product.in_stock,
    }


def match_json(match: Match) -> dict[str, Any]:
    out = product_json(match.product)
    out["score"] = round(float(match.score), 4)
    out["colour_distance"] = (
        None if match.colour_distance is None else round(float(match.colour_distance), 1)
    )
    return out


def look_json(look: Look) -> dict[str, Any]:
    base = f"{API}/looks/{look.id}"
    items = []
    for result in look.items:
        item = result.item.to_json()
        i = result.item.index
        item["cutout_url"] = f"{base}/items/{i}/cutout.png"
        item["overlay_url"] = f"{base}/overlay.png?highlight={i}"
        item["products"] = [match_json(m) for m in result.matches]
        items.append(item)
    return {
        "id": look.id,
        "photo_sha256": look.photo_sha256,
        "width": look.width,
        "height": look.height,
        "overlay_url": f"{base}/overlay.png",
        "items": items,
        "timings": {k: round(v, 1) for k, v in look.timings.items()},
    }


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


# --- uploads -----------------------------------------------------------------------------


async def _read_form(request: Request) -> Any:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(
            415,
            "unsupported_media_type",
            f"expected multipart/form-data with an image file, got {content_type or 'no body'}",
        )
    try:
        return await request.form(max_files=2, max_fields=20)
    except StarletteHTTPException as err:
        if err.status_code == 413:
            raise
        raise APIError(400, "bad_request", f"could not read the form: {err.detail}") from err


async def _read_upload(form: Any, field_name: str, limit: int) -> bytes:
    upload = form.get(field_name)
    if upload is None:
        raise APIError(400, "missing_file", f"the form has no {field_name!r} file field")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "missing_file", f"{field_name!r} must be a file, not a text field")
    ctype = (upload.content_type or "application/octet-stream").lower()
    if not ctype.startswith(ACCEPTED_UPLOAD_TYPES):
        raise APIError(
            415,
            "unsupported_media_type",
            f"{upload.filename or field_name} is {ctype}; upload a JPEG, PNG or WebP photo",
        )
    data = await upload.read(limit + 1)
    await upload.close()
    if len(data) > limit:
        raise APIError(413, "too_large", f"the image is over the {limit:,} byte limit")
    if not data:
        raise APIError(400, "empty", "the uploaded file is empty")
    return data


def _form_fields(form: Any, skip: str) -> dict[str, Any]:
    """The text fields of a form (files are read separately)."""
    return {
        key: value
        for key, value in form.multi_items()
        if key != skip and not isinstance(value, UploadFile)
    }


# --- the app -----------------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The API and web UI for ``settings``; models load at startup (see ``/readyz``)."""
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(state.load)
        yield
        if state.engine is not None:
            with state.engine.store_lock:
                state.engine.index.flush()

    app = FastAPI(
        title="CandidFashion",
        version=__version__,
        description="Find every garment in a photo and the catalog products that look like it.",
        docs_url=None,  # the default page pulls Swagger UI from a CDN; see /docs below
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.cf = state
    app.add_middleware(
        UploadLimitMiddleware, max_body=settings.max_upload_bytes + MULTIPART_OVERHEAD
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err.status, err.code, err.message)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, err: ImageError) -> JSONResponse:
        return error_response(IMAGE_ERROR_STATUS.get(err.code, 400), err.code, str(err))

    @app.exception_handler(SearchError)
    async def _search_error(request: Request, err: SearchError) -> JSONResponse:
        return error_response(422, "bad_filter", str(err))

    @app.exception_handler(FeedbackError)
    async def _feedback_error(request: Request, err: FeedbackError) -> JSONResponse:
        return error_response(422, "bad_feedback", str(err))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", _validation_message(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(err.status_code, "error")
        message = str(err.detail) if err.detail else code.replace("_", " ")
        if err.status_code == 404 and message == "Not Found":
            message = f"no such resource: {request.url.path}"
        return JSONResponse(
            error_body(code, message), status_code=err.status_code, headers=err.headers
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the server log has details")

    def _record_timings(look: Look) -> None:
        for key, value in look.timings.items():
            if key != "total_ms":
                state.metrics.stages.labels(key.removesuffix("_ms")).observe(value / 1000)
        state.metrics.items.observe(len(look.items))

    def _get_look(look_id: str) -> CachedLook:
        entry = state.looks.get(look_id)
        if entry is None:
            raise APIError(
                404, "look_not_found", f"look {look_id!r} is unknown or expired; upload again"
            )
        return entry

    # -- health & metrics ---------------------------------------------------------------

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Models loaded and both stores answering; 503 otherwise."""
        if state.engine is None:
            reason = state.engine_error or "models are still loading"
            return error_response(503, "not_ready", reason)
        try:
            counts = await anyio.to_thread.run_sync(state.engine.check_store)
        except Exception as err:
            return error_response(503, "store_unreachable", f"{type(err).__name__}: {err}")
        return JSONResponse({"status": "ready", **counts})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of this worker process."""
        state.metrics.looks_cached.set(len(state.looks))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(f"{API}/info", tags=["ops"])
    async def info() -> dict[str, Any]:
        """Versions and model identities (and any metrics stored in the model files)."""
        engine = state.require_engine()
        return {
            "version": __version__,
            "parser": _model_info(engine.parser),
            "embedder": _model_info(engine.embedder),
            "catalog": await anyio.to_thread.run_sync(engine.check_store),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_image_pixels": settings.max_image_pixels,
                "max_k": MAX_K,
            },
        }

    # -- looks --------------------------------------------------------------------------

    look_body = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["photo"],
                        "properties": {
                            "photo": {"type": "string", "format": "binary"},
                            **_filter_schema(),
                        },
                    }
                }
            },
        }
    }

    @app.post(f"{API}/looks", tags=["looks"], openapi_extra=look_body)
    async def create_look(request: Request) -> dict[str, Any]:
        """Upload a photo (field ``photo``); get every item and its best products."""
        form = await _read_form(request)
        fields: LookForm = _validated(LookForm, _form_fields(form, "photo"))
        filters = fields.filters().validated()
        data = await _read_upload(form, "photo", settings.max_upload_bytes)
        engine = state.require_engine()

        def work() -> Look:
            from candidfashion.imageio import load_image, sha256_bytes

            image = load_image(
                data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
            )
            return engine.look(image, filters, fields.k, photo_sha256=sha256_bytes(data))

        look = await state.run(work)
        state.looks.put(CachedLook(look=look, photo=data))
        _record_timings(look)
        return look_json(look)

    @app.get(f"{API}/looks/{{look_id}}", tags=["looks"])
    async def get_look(look_id: str) -> dict[str, Any]:
        """A look again, while it is cached."""
        return look_json(_get_look(look_id).look)

    @app.get(f"{API}/looks/{{look_id}}/overlay.png", tags=["looks"], response_class=Response)
    async def look_overlay(
        look_id: str, highlight: int | None = Query(None, ge=0, le=1000)
    ) -> Response:
        """The photo with every item outlined (one item emphasised with ``highlight``)."""
        entry = _get_look(look_id)
        if highlight is not None and highlight >= len(entry.look.items):
            raise APIError(404, "item_not_found", f"the look has no item {highlight}")
        if highlight is None and entry.overlay_png is not None:
            return Response(entry.overlay_png, media_type="image/png")

        def render() -> bytes:
            from candidfashion.imageio import load_image
            from candidfashion.items import render_overlay

            image = working_image(load_image(entry.photo, max_pixels=settings.max_image_pixels))
            items = [r.item for r in entry.look.items]
            return _png(render_overlay(image, items, highlight=highlight))

        png = await state.run(render)
        if highlight is None:
            entry.overlay_png = png
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})

    @app.get(
        f"{API}/looks/{{look_id}}/items/{{index}}/cutout.png",
        tags=["looks"],
        response_class=Response,
    )
    async def item_cutout(look_id: str, index: int) -> Response:
        """The item cut out of the photo, transparent around it."""
        entry = _get_look(look_id)
        if not 0 <= index < len(entry.look.items):
            raise APIError(404, "item_not_found", f"the look has no item {index}")
        png = await anyio.to_thread.run_sync(_png, entry.look.items[index].item.cutout)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=600"})

    # -- item search --------------------------------------------------------------------

    search_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "look_id": {"type": "string"},
                            "item": {"type": "integer", "minimum": 0},
                            **_filter_schema(),
                        },
                    }
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["cutout"],
                        "properties": {
                            "cutout": {"type": "string", "format": "binary"},
                            **_filter_schema(),
                        },
                    }
                },
            },
        }
    }

    @app.post(f"{API}/items/search", tags=["looks"], openapi_extra=search_body)
    async def search_item(request: Request) -> dict[str, Any]:
        """Search again for one item of a look (JSON: ``look_id`` + ``item``) or for an
        uploaded cut-out (multipart field ``cutout``), with filters. No photo re-upload."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError as err:
                raise APIError(400, "bad_json", f"the body is not valid JSON: {err}") from err
            if not isinstance(body, dict):
                raise APIError(422, "validation_error", "the JSON body must be an object")
            fields: ItemSearchFields = _validated(ItemSearchFields, body)
            if fields.look_id is None or fields.item is None:
                raise APIError(
                    422, "validation_error", "send look_id and item, or upload a cutout file"
                )
            entry = _get_look(fields.look_id)
            if fields.item >= len(entry.look.items):
                raise APIError(404, "item_not_found", f"the look has no item {fields.item}")
            result = entry.look.items[fields.item]
            filters = fields.filters()
            filters.category = filters.category or result.item.category
            filters = filters.validated()
            engine = state.require_engine()
            vector = result.vector
            if vector is None:
                vector = (await state.run(engine.embedder.embed, [result.item.cutout]))[0]
            start = time.perf_counter()
            matches = await state.run(engine.search_vector, vector, filters, fields.k)
        elif content_type.startswith("multipart/form-data"):
            form = await _read_form(request)
            fields = _validated(ItemSearchFields, _form_fields(form, "cutout"))
            filters = fields.filters().validated()
            data = await _read_upload(form, "cutout", settings.max_upload_bytes)
            engine = state.require_engine()

            def work() -> list[Match]:
                from candidfashion.imageio import load_image_rgba

                image = load_image_rgba(
                    data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels
                )
                if bool((image[..., 3] == 255).all()):
                    # An opaque upload is a product-style photo: search it the way catalog
                    # photos were embedded (RGB, background borders trimmed).
                    image = np.ascontiguousarray(image[..., :3])
                return engine.search_image(image, filters, fields.k)

            start = time.perf_counter()
            matches = await state.run(work)
        else:
            raise APIError(
                415,
                "unsupported_media_type",
                "send application/json (look_id, item) or multipart/form-data (cutout)",
            )
        return {
            "products": [match_json(m) for m in matches],
            "filters": {k: v for k, v in filters.__dict__.items() if v is not None},
            "timings": {"search_ms": round((time.perf_counter() - start) * 1000, 1)},
        }

    # -- catalog ------------------------------------------------------------------------

    @app.get(f"{API}/products", tags=["catalog"])
    async def list_products(
        q: str | None = Query(None, max_length=200, description="Keyword search."),
        category: str | None = Query(None, max_length=40),
        limit: int = Query(24, ge=1, le=200),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> dict[str, Any]:
        """Browse or keyword-search the catalog."""
        engine = state.require_engine()
        q = (q or "").strip() or None
        category = (category or "").strip().lower() or None
        if category is not None and category not in ITEM_CLASSES:
            raise APIError(
                422,
                "bad_filter",
                f"unknown category {category!r}; expected one of {', '.join(ITEM_CLASSES)}",
            )

        def work() -> tuple[list[Any], int | None]:
            with engine.store_lock:
                if q is not None:
                    found = engine.db.search_text(q, limit=offset + limit + 1000)
                    if category is not None:
                        found = [p for p in found if p.category == category]
                    return found[offset : offset + limit], len(found)
                total = (
                    engine.db.count()
                    if category is None
                    else engine.db.categories().get(category, 0)
                )
                return engine.db.list(limit=limit, offset=offset, category=category), total

        try:
            products, total = await anyio.to_thread.run_sync(work)
        except ValueError as err:  # e.g. an FTS query the catalog refuses
            raise APIError(422, "bad_query", str(err)) from err
        return {
            "products": [product_json(p) for p in products],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    @app.get(f"{API}/products/{{product_id}}", tags=["catalog"])
    async def get_product(product_id: str) -> dict[str, Any]:
        """One product."""
        return product_json(await _product(product_id))

    async def _product(product_id: str) -> Any:
        engine = state.require_engine()

        def work() -> Any:
            with engine.store_lock:
                return engine.db.get(product_id)

        product = await anyio.to_thread.run_sync(work)
        if product is None:
            raise APIError(404, "product_not_found", f"no product with id {product_id!r}")
        return product

    @app.get(f"{API}/products/{{product_id}}/image", tags=["catalog"], response_class=Response)
    async def product_image(product_id: str) -> Response:
        """The product's photo (served from the catalog's image folder, or a redirect)."""
        product = await _product(product_id)
        path = product.image_path
        if path and Path(path).is_file():
            return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        if _safe_url(product.image):
            return RedirectResponse(product.image, status_code=307)
        raise APIError(404, "image_not_found", f"product {product_id!r} has no stored image")

    @app.get(f"{API}/categories", tags=["catalog"])
    async def categories() -> dict[str, Any]:
        """Product counts per category, the item taxonomy and the colour names."""
        engine = state.require_engine()

        def work() -> dict[str, int]:
            with engine.store_lock:
                return dict(engine.db.categories())

        counts = await anyio.to_thread.run_sync(work)
        return {
            "categories": [
                {"name": c, "count": counts.get(c, 0), "colour": _class_colour(c)}
                for c in ITEM_CLASSES
            ],
            "colours": _colour_swatches(),
            "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_k": MAX_K},
        }

    @app.post(f"{API}/products", tags=["catalog"])
    async def upsert_products(request: Request) -> dict[str, Any]:
        """Add or update products (JSON list; needs ``X-API-Key`` when a key is configured)."""
        _check_write(request, settings)
        try:
            body = await request.json()
        except ValueError as err:
            raise APIError(400, "bad_json", f"the body is not valid JSON: {err}") from err
        if not isinstance(body, list) or not body:
            raise APIError(422, "validation_error", "send a non-empty JSON list of products")
        if len(body) > 500:
            raise APIError(413, "too_many_products", "send at most 500 products per request")
        engine = state.require_engine()
        report = await state.run(_upsert_products, engine, settings, body)
        return report

    @app.delete(f"{API}/products/{{product_id}}", tags=["catalog"])
    async def delete_product(product_id: str, request: Request) -> dict[str, Any]:
        """Remove a product (needs ``X-API-Key`` when a key is configured)."""
        _check_write(request, settings)
        engine = state.require_engine()

        def work() -> int:
            with engine.store_lock:
                removed = engine.db.delete([product_id])
                engine.index.delete([product_id])
                engine.index.flush()
                return int(removed)

        if await anyio.to_thread.run_sync(work) == 0:
            raise APIError(404, "product_not_found", f"no product with id {product_id!r}")
        return {"deleted": product_id}

    # -- feedback -----------------------------------------------------------------------

    @app.post(f"{API}/feedback", tags=["feedback"])
    async def feedback(body: FeedbackIn) -> dict[str, Any]:
        """A shopper's verdict on a match (good / wrong) or on an item's outline."""
        entry = _get_look(body.look_id)
        if body.item >= len(entry.look.items):
            raise APIError(404, "item_not_found", f"the look has no item {body.item}")
        item = entry.look.items[body.item].item
        if state.feedback is None:
            state.feedback = FeedbackStore.from_settings(settings)
        store = state.feedback

        def work() -> int:
            return store.add(
                photo_sha256=entry.look.photo_sha256,
                item_index=item.index,
                category=item.category,
                verdict=body.verdict,
                product_id=body.product_id,
                look_id=entry.look.id,
            )

        record_id = await anyio.to_thread.run_sync(work)
        return {"id": record_id, "verdict": body.verdict}

    # -- demo photos --------------------------------------------------------------------

    @app.get(f"{API}/demo/photos", tags=["demo"])
    async def demo_photos() -> dict[str, Any]:
        """Example photos for the web UI's demo buttons."""
        photos = _demo_photos()
        return {
            "photos": [
                {"index": i, "name": p.stem.replace("_", " "), "url": f"{API}/demo/photos/{i}"}
                for i, p in enumerate(photos)
            ]
        }

    @app.get(f"{API}/demo/photos/{{index}}", tags=["demo"], response_class=Response)
    async def demo_photo(index: int) -> Response:
        photos = _demo_photos()
        if not 0 <= index < len(photos):
            raise APIError(404, "photo_not_found", f"there is no demo photo {index}")
        return FileResponse(photos[index], headers={"Cache-Control": "max-age=86400"})

    # -- docs (offline) and the web UI ---------------------------------------------------

    _mount_docs(app)
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="web")
    return app


def _filter_schema() -> dict[str, Any]:
    return {
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
        "category": {"type": "string", "enum": list(ITEM_CLASSES)},
        "colour": {"type": "string", "description": "A colour name (red) or #rrggbb."},
        "min_price": {"type": "number", "minimum": 0},
        "max_price": {"type": "number", "minimum": 0},
        "in_stock": {"type": "boolean"},
        "keyword": {"type": "string", "maxLength": 200},
    }


def _model_info(model: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"sha256": getattr(model, "sha256", None)}
    for attr in ("source", "input_size", "dim"):
        if hasattr(model, attr):
            value = getattr(model, attr)
            info[attr] = list(value) if isinstance(value, tuple) else value
    session = getattr(model, "session", None)
    if session is not None:
        meta = session.get_modelmeta().custom_metadata_map
        info["metadata"] = {k: v for k, v in meta.items() if len(v) < 4000}
    if isinstance(info.get("source"), str) and os.path.isabs(info["source"]):
        info["source"] = Path(info["source"]).name  # no server paths in public answers
    return info


def _class_colour(name: str) -> str:
    r, g, b = CLASS_COLOURS[CLASSES.index(name)]
    return f"#{r:02x}{g:02x}{b:02x}"


def _colour_swatches() -> list[dict[str, str]]:
    from candidfashion.colours import COLOUR_NAMES, PALETTE_HEX

    return [{"name": name, "hex": PALETTE_HEX[name]} for name in COLOUR_NAMES]


def _demo_photos() -> list[Path]:
    try:
        from candidfashion.demo import demo_photos
    except ImportError:
        return []
    return list(demo_photos())


def _check_write(request: Request, settings: Settings) -> None:
    if settings.api_key:
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise APIError(401, "unauthorized", "catalog writes need a valid X-API-Key header")
        return
    if settings.host not in LOOPBACK_HOSTS:
        raise APIError(
            403,
            "writes_disabled",
            f"this server listens on {settings.host} without an API key, so catalog writes are "
            "off; set CANDIDFASHION_API_KEY and send it as X-API-Key",
        )


def _upsert_products(engine: ShopTheLook, settings: Settings, body: list[Any]) -> dict[str, Any]:
    """Validate, load and embed each product image, then write catalog rows and vectors."""
    from candidfashion.catalog import prepare_products

    prepared, errors = prepare_products(body, settings, engine.embedder)
    with engine.store_lock:
        added, updated = 0, 0
        if prepared.products:
            ids = [p.id for p in prepared.products]
            existing = engine.db.get_many(ids)
            engine.db.upsert(prepared.products)
            engine.index.upsert(ids, prepared.vectors, prepared.metadata)
            engine.index.flush()
            updated = sum(1 for i in ids if i in existing)
            added = len(ids) - updated
    return {
        "added": added,
        "updated": updated,
        "errors": [{"index": e.line, "message": e.message} for e in errors],
    }


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI from the locally installed ``swagger-ui-bundle`` package (no CDN); without
    it, ``/docs`` is a small self-hosted page that lists the endpoints from /openapi.json."""
    assets: Path | None = None
    try:
        import swagger_ui_bundle

        assets = Path(swagger_ui_bundle.swagger_ui_path)
    except ImportError:
        assets = None
    if assets is not None and (assets / "swagger-ui-bundle.js").is_file():
        from fastapi.openapi.docs import get_swagger_ui_html

        app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url=app.openapi_url or "/openapi.json",
                title="CandidFashion API",
                swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                swagger_css_url="/docs/assets/swagger-ui.css",
                swagger_favicon_url="/docs/assets/favicon-32x32.png",
                # No call-outs to the public spec validator.
                swagger_ui_parameters={"validatorUrl": None},
            )
    else:

        @app.get("/docs", include_in_schema=False)
        async def docs_fallback() -> RedirectResponse:
            return RedirectResponse("/api.html")


# --- serving -----------------------------------------------------------------------------


def _settings_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env[f"CANDIDFASHION_{name.upper()}"] = str(value)
    return env


def app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes: settings come from ``CANDIDFASHION_*``."""
    from candidfashion.log import setup_logging

    settings = Settings()
    setup_logging(level=settings.log_level, json_lines=settings.log_json)
    return create_app(settings)


def run_server(settings: Settings) -> None:
    """Serve until interrupted. ``settings.workers > 1`` starts that many processes."""
    import uvicorn

    if settings.workers > 1:
        # Workers are fresh processes: hand them the settings through the environment.
        os.environ.update(_settings_env(settings))
        uvicorn.run(
            "candidfashion.api:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=None,
            timeout_keep_alive=10,
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,
            timeout_keep_alive=10,
        )
