"""Catalog ingestion on Ray Data: image loading and embedding spread over a pool of actors.

The driver reads, validates and hashes rows exactly as the single-process path does (so
"unchanged" rows are skipped before any work is shipped), then each chunk of changed rows
becomes a Ray dataset: ``map_batches`` runs :class:`PrepareActor` (one per CPU, each holding
its own ONNX Runtime session) which loads, normalises, stores, colours and embeds images with
the same :class:`~candidfashion.catalog.Preparer` code, and the driver writes the results to
the vector store and the catalog in commit batches.

``ray_address="local"`` starts a small local Ray (at most 2 CPUs); any other value is passed
to ``ray.init(address=...)``, e.g. ``"auto"`` or ``"ray://head:10001"``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from candidfashion.catalog import (
    IngestReport,
    PreparedBatch,
    Preparer,
    Product,
    RawRow,
    RowError,
    RowProblem,
    WorkItem,
    progress_bar,
)
from candidfashion.config import Settings

if TYPE_CHECKING:
    from candidfashion.catalog import _IngestRun

log = logging.getLogger(__name__)

#: Changed rows shipped to Ray per dataset (bounds driver memory on huge catalogs).
CHUNK_ROWS = 4096


class RayUnavailable(RuntimeError):
    """Ray is not installed or the cluster cannot be reached."""


def init_ray(address: str) -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise RayUnavailable(
            "--ray needs Ray Data: pip install 'candidfashion[scale]' (or 'ray[data]')"
        ) from err
    if ray.is_initialized():
        return ray
    # Our own rich progress bar reports progress; Ray's per-operator bars would interleave.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if address == "local":
        cpus = max(1, min(2, os.cpu_count() or 1))
        try:
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
                configure_logging=False,
            )
        except Exception as err:  # Ray raises bare Exception when its node fails to start
            raise RayUnavailable(f"could not start a local Ray: {err}") from err
    else:
        try:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError) as err:
            raise RayUnavailable(f"cannot connect to Ray at {address!r}: {err}") from err
    return ray


class PrepareActor:
    """A Ray Data actor: its own embedder (and parser) loaded once, then batch after batch."""

    def __init__(
        self, settings_json: str, embedder_source: str, allow_remote: bool, parser: str | bool
    ) -> None:
        from candidfashion.embed import Embedder

        settings = Settings.model_validate_json(settings_json)
        # One intra-op thread per actor: the pool already uses every CPU Ray was given.
        self.embedder = Embedder(embedder_source, threads=1, cache_dir=settings.data_dir / "models")
        parser_obj: Any = None
        if parser is False:
            parser_obj = False
        elif isinstance(parser, str) and parser:
            from candidfashion.parse import Parser

            parser_obj = Parser(parser, threads=1, cache_dir=settings.data_dir / "models")
        self.preparer = Preparer(
            settings, self.embedder, allow_remote=allow_remote, parser=parser_obj
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            WorkItem(
                row=RawRow(**json.loads(str(row_json))),
                content_hash=str(digest),
                local_path=str(path) or None,
            )
            for row_json, digest, path in zip(
                batch["row"], batch["content_hash"], batch["local_path"], strict=True
            )
        ]
        prepared, errors = self.preparer.prepare(items)
        n_ok, n_err = len(prepared.products), len(errors)
        dim = self.embedder.dim
        vectors = np.zeros((n_ok + n_err, dim), dtype=np.float32)
        vectors[:n_ok] = prepared.vectors
        return {
            "ok": np.array([True] * n_ok + [False] * n_err),
            "line": np.array([0] * n_ok + [e.line for e in errors], dtype=np.int64),
            "product": np.array(
                [p.model_dump_json() for p in prepared.products] + [""] * n_err, dtype=object
            ),
            "content_hash": np.array(prepared.hashes + [""] * n_err, dtype=object),
            "message": np.array([""] * n_ok + [e.message for e in errors], dtype=object),
            "vector": vectors,
        }


def _work_chunks(run: _IngestRun, rows: Iterator[Any]) -> Iterator[list[WorkItem]]:
    chunk: list[WorkItem] = []
    for work in run.changed_rows(rows):
        chunk.extend(work)
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parser_spec(run: _IngestRun) -> str | bool:
    if run.parser is False:
        return False
    if run.parser is not None and run.parser is not True:
        return str(run.parser.source)
    return run.settings.parser_model


def ingest_with_ray(
    run: _IngestRun,
    rows: Iterator[tuple[int, Any]],
    ray_address: str,
    *,
    progress: bool = True,
    total: int | None = None,
) -> IngestReport:
    """Run the prepare+embed step of an ingest on Ray Data; write results as they arrive."""
    ray = init_ray(ray_address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, cpus)
    ctor = {
        "settings_json": run.settings.model_dump_json(),
        "embedder_source": str(run.embedder.path),
        "allow_remote": run.allow_remote,
        "parser": _parser_spec(run),
    }
    with progress_bar(progress) as bar:
        task = bar.add_task(f"ingesting on Ray ({actors} actors)", total=total, embedded=0)
        for chunk in _work_chunks(run, rows):
            items = [
                {
                    "row": json.dumps(asdict(w.row)),
                    "content_hash": w.content_hash,
                    "local_path": w.local_path or "",
                }
                for w in chunk
            ]
            ds = ray.data.from_items(items).map_batches(
                PrepareActor,
                batch_size=run.batch_size,
                batch_format="numpy",
                # Start work as soon as one actor is up; grow to one per CPU.
                concurrency=(1, actors),
                num_cpus=1,
                fn_constructor_kwargs=ctor,
            )
            for out in ds.iter_batches(batch_size=run.batch_size, batch_format="numpy"):
                run.add_prepared(*_unpack(out))
                bar.update(task, completed=run.done(), embedded=run.embedded)
        run.commit()
        bar.update(task, completed=run.done(), embedded=run.embedded)
    return run.report()


def _unpack(out: dict[str, np.ndarray]) -> tuple[PreparedBatch, list[RowError]]:
    ok = np.asarray(out["ok"], dtype=bool)
    products = [Product.model_validate_json(str(s)) for s in out["product"][ok]]
    errors = [
        RowError(int(line), str(msg))
        for line, msg in zip(out["line"][~ok], out["message"][~ok], strict=True)
    ]
    vectors = np.asarray(out["vector"], dtype=np.float32)[ok]
    if len(vectors) != len(products):
        raise RowProblem("Ray returned a batch whose vectors and products disagree")
    return (
        PreparedBatch(
            products=products,
            vectors=vectors.reshape(len(products), -1),
            metadata=[p.vector_metadata() for p in products],
            hashes=[str(h) for h in out["content_hash"][ok]],
        ),
        errors,
    )
