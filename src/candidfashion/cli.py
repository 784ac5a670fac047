"""The ``candidfashion`` command line: one verb per job, each delegating to its stage module.

Stage modules are imported inside the verbs so ``--help`` stays fast and the serving
install never imports torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from candidfashion import __version__
from candidfashion.config import Settings, get_settings

app = typer.Typer(
    name="candidfashion",
    help="Shop the look: find every garment in a photo and search a product catalog for it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
catalog_app = typer.Typer(help="Manage the product catalog.", no_args_is_help=True)
feedback_app = typer.Typer(help="Shopper feedback on matches and outlines.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(feedback_app, name="feedback")

console = Console(stderr=True)
out = Console()


class CLIError(Exception):
    """An error the user can fix; printed without a traceback."""


def _settings() -> Settings:
    return get_settings()


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    data_dir: Annotated[
        Path | None, typer.Option(help="Where catalogs, indexes and runs live.")
    ] = None,
    log_json: Annotated[bool, typer.Option(help="Log as JSON lines (for servers).")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    from candidfashion.log import LogConfigError, setup_logging

    settings = get_settings()
    if data_dir is not None:
        settings.data_dir = data_dir
    settings.log_json = settings.log_json or log_json
    settings.log_level = log_level
    try:
        setup_logging(level=settings.log_level, json_lines=settings.log_json)
    except LogConfigError as err:
        raise _fail(str(err), code=2) from err


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    demo: Annotated[
        bool, typer.Option(help="Build the demo catalog first if the catalog is empty.")
    ] = False,
) -> None:
    """Start the web app and HTTP API."""
    from candidfashion.api import run_server

    settings = _settings()
    settings.host = host or settings.host
    settings.port = port or settings.port
    settings.workers = workers or settings.workers
    if demo:
        from candidfashion.demo import ensure_demo_catalog

        ensure_demo_catalog(settings)
    run_server(settings)


@app.command()
def parse(
    photo: Annotated[Path, typer.Argument(help="A photo of a dressed person.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for cut-outs and items.json.")],
    model: Annotated[str | None, typer.Option(help="Parser model source.")] = None,
) -> None:
    """Find the items in a photo; write one PNG cut-out per item, an overlay and items.json."""
    from candidfashion.imageio import ImageError
    from candidfashion.items import write_parse_outputs

    settings = _settings()
    try:
        items = write_parse_outputs(photo, out_dir, model or settings.parser_model, settings)
    except ImageError as err:
        raise _fail(str(err)) from err
    for item in items:
        out.print(f"{item.category:10s} score={item.score:.2f} box={item.box}")
    out.print(f"{len(items)} items written to {out_dir}")


@catalog_app.command("add")
def catalog_add(
    source: Annotated[Path, typer.Argument(help="CSV, JSONL or a folder of images.")],
    base_dir: Annotated[
        Path | None, typer.Option(help="Folder local image paths must stay inside.")
    ] = None,
    allow_remote: Annotated[bool, typer.Option(help="Fetch http(s) image URLs.")] = False,
    ray: Annotated[
        str | None,
        typer.Option(help="Embed on Ray Data: 'local' or a cluster address."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images embedded per batch.")] = 32,
) -> None:
    """Add or update products (upsert by id); bad rows are reported and skipped."""
    from candidfashion.catalog import ingest

    settings = _settings()
    report = ingest(
        source,
        settings,
        base_dir=base_dir,
        allow_remote=allow_remote or settings.allow_remote_images,
        ray_address=ray,
        batch_size=batch_size,
    )
    for error in report.errors:
        console.print(f"[yellow]line {error.line}:[/] {error.message}")
    out.print(
        f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
        f"skipped {len(report.errors)}"
    )
    if report.added + report.updated + report.unchanged == 0 and report.errors:
        raise typer.Exit(1)


@catalog_app.command("remove")
def catalog_remove(ids: Annotated[list[str], typer.Argument(help="Product ids.")]) -> None:
    """Remove products by id."""
    from candidfashion.catalog import remove_products

    removed = remove_products(ids, _settings())
    out.print(f"removed {removed} of {len(ids)}")


@catalog_app.command("list")
def catalog_list(
    limit: Annotated[int, typer.Option(help="How many.")] = 50,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Keyword search.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines output.")] = False,
) -> None:
    """List products, optionally matching a keyword query."""
    from candidfashion.catalog import list_products

    products = list_products(_settings(), limit=limit, query=query)
    if as_json:
        for p in products:
            out.print_json(p.model_dump_json())
        return
    from rich.table import Table

    table = Table("id", "title", "category", "price", "in stock")
    for p in products:
        price = "" if p.price is None else f"{p.price:.2f} {p.currency or ''}"
        table.add_row(p.id, p.title, p.category or "", price, "yes" if p.in_stock else "no")
    out.print(table)


@catalog_app.command("stats")
def catalog_stats() -> None:
    """Counts per category and the vector store in use."""
    from candidfashion.catalog import catalog_stats as stats

    out.print_json(json.dumps(stats(_settings())))


@app.command()
def search(
    photo: Annotated[Path, typer.Argument(help="A photo of a dressed person.")],
    category: Annotated[str | None, typer.Option(help="Only items of this category.")] = None,
    colour: Annotated[str | None, typer.Option(help="Wanted colour, e.g. red.")] = None,
    min_price: Annotated[float | None, typer.Option(help="Lowest price.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest price.")] = None,
    k: Annotated[int, typer.Option("-k", help="Matches per item.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """The whole job: items in the photo and the best products for each."""
    from candidfashion.imageio import ImageError
    from candidfashion.search import SearchFilters, ShopTheLook

    settings = _settings()
    filters = SearchFilters(
        category=category, colour=colour, min_price=min_price, max_price=max_price
    )
    try:
        engine = ShopTheLook.from_settings(settings)
        look = engine.look_from_path(photo, filters=filters, k=k)
    except (ImageError, ValueError) as err:
        raise _fail(str(err)) from err
    if as_json:
        sys.stdout.write(json.dumps(look.to_json(), indent=2) + "\n")
        return
    for item in look.items:
        out.print(f"[bold]{item.item.category}[/] ({item.item.score:.2f})")
        for m in item.matches:
            out.print(f"  {m.score:.3f}  {m.product.id}  {m.product.title}")


@app.command()
def train(
    data: Annotated[
        list[str], typer.Option(help="SOURCE:DIR, e.g. ccp:../shared/data/ccp; repeatable.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints).")] = Path(
        "runs/parser"
    ),
    epochs: Annotated[int, typer.Option(help="Epochs in total.")] = 40,
    encoder: Annotated[str, typer.Option(help="lite0, lite1 or lite2.")] = "lite0",
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    size: Annotated[str, typer.Option(help="Training crop WxH.")] = "192x288",
    input_size: Annotated[
        str, typer.Option(help="Parser input WxH (validation and export).")
    ] = "256x384",
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    mlflow_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    val_ids: Annotated[
        Path | None, typer.Option(help="File of validation ids (default: splits/).")
    ] = None,
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this checkpoint's weights (fine-tuning).")
    ] = None,
    ema: Annotated[
        float, typer.Option(help="Weight moving-average decay, e.g. 0.995 (0: off).")
    ] = 0.0,
    bf16: Annotated[
        bool, typer.Option("--bf16/--fp32", help="bfloat16 autocast (faster on AVX512-BF16).")
    ] = False,
    repeat_threshold: Annotated[
        float,
        typer.Option(
            help="Draw photos of rare classes more often (repeat-factor sampling), e.g. 0.3;"
            " 0: off."
        ),
    ] = 0.0,
    lovasz_weight: Annotated[
        float,
        typer.Option(help="Weight of an added Lovasz-softmax loss (an IoU surrogate); 0: off."),
    ] = 0.0,
) -> None:
    """Train the garment parser (needs the [train] extra)."""
    try:
        from candidfashion.train.loop import TrainConfig, run_training
    except ImportError as err:
        raise _fail(f"training needs the [train] extra: {err}") from err
    width, height = (int(v) for v in size.lower().split("x"))
    in_w, in_h = (int(v) for v in input_size.lower().split("x"))
    cfg = TrainConfig(
        data=data,
        out_dir=out_dir,
        epochs=epochs,
        encoder=encoder,
        batch_size=batch_size,
        lr=lr,
        crop=(width, height),
        input_size=(in_w, in_h),
        preload_height=round(in_h * 1.25),
        resume=resume,
        seed=seed,
        mlflow_uri=mlflow_uri or _settings().resolved_mlflow_uri(),
        val_ids=val_ids,
        init_from=init_from,
        ema=ema,
        bf16=bf16,
        repeat_threshold=repeat_threshold,
        lovasz_weight=lovasz_weight,
    )
    try:
        run_training(cfg)
    except ValueError as err:
        raise _fail(str(err)) from err


@app.command("eval")
def evaluate(
    data: Annotated[str, typer.Option(help="SOURCE:DIR, e.g. ccp:../shared/data/ccp.")],
    ids: Annotated[Path | None, typer.Option(help="File of photo ids (default: all).")] = None,
    model: Annotated[str | None, typer.Option(help="Parser model source.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics here.")] = None,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Average with the mirrored photo (default: the parser_flip setting).",
        ),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(help="Resamples for the garment mIoU 95% interval (0: off).", min=0)
    ] = 1000,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="A second parser scored on the same photos; prints the difference in garment"
            " mIoU with a paired 95% interval."
        ),
    ] = None,
) -> None:
    """Evaluate an exported ONNX parser on a labelled folder; per-class IoU and garment mIoU."""
    from candidfashion.evaluate import evaluate_parser, print_report

    settings = _settings()
    if flip is not None:
        settings = settings.model_copy(update={"parser_flip": flip})
    report = evaluate_parser(
        data,
        model or settings.parser_model,
        ids_file=ids,
        settings=settings,
        bootstrap=bootstrap,
        baseline_source=baseline,
    )
    print_report(report, out)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))


@app.command()
def export(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Parser checkpoint (.pt) to export.")
    ] = None,
    out_path: Annotated[
        Path | None,
        typer.Option("--out", help="ONNX file to write (default: models/<kind>.onnx)."),
    ] = None,
    kind: Annotated[str, typer.Option(help="parser or embedder.")] = "parser",
    encoder: Annotated[str, typer.Option(help="Embedder encoder (lite0/1/2).")] = "lite0",
    register: Annotated[
        str | None, typer.Option(help="Also log and register in MLflow under this name.")
    ] = None,
) -> None:
    """Export the parser (from a checkpoint) or the embedder (from ImageNet weights) to ONNX."""
    try:
        from candidfashion.train.export import export_embedder, export_parser
    except ImportError as err:
        raise _fail(f"export needs the [train] extra: {err}") from err
    if kind not in ("parser", "embedder"):
        raise _fail("--kind must be parser or embedder")
    out_path = out_path or Path("models") / f"{kind}.onnx"
    if kind == "parser":
        if checkpoint is None:
            raise _fail("--checkpoint is required for the parser")
        path = export_parser(checkpoint, out_path, register_as=register)
    else:
        path = export_embedder(encoder, out_path)
    out.print(f"wrote {path}")


@app.command()
def demo(
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the web app afterwards.")
    ] = False,
) -> None:
    """Build the demo catalog from the openvto package's product shots."""
    from candidfashion.demo import ensure_demo_catalog

    settings = _settings()
    summary = ensure_demo_catalog(settings, rebuild=True)
    out.print(summary)
    if serve_after:
        from candidfashion.api import run_server

        run_server(settings)


@feedback_app.command("export")
def feedback_export(
    out_path: Annotated[Path, typer.Option("--out", help="JSONL file to write.")] = Path(
        "feedback.jsonl"
    ),
) -> None:
    """Export shopper feedback as JSON lines, for re-ranking and retraining."""
    from candidfashion.feedback import FeedbackStore

    n = FeedbackStore.from_settings(_settings()).export_jsonl(out_path)
    out.print(f"wrote {n} records to {out_path}")


if __name__ == "__main__":
    app()
