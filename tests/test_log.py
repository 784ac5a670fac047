"""The logging setup: one handler however often it is called, text or JSON lines, clear errors."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from candidfashion.log import JsonLinesFormatter, LogConfigError, setup_logging


def _ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if type(h).__name__ == "_StderrHandler"]


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """Leave the root logger as the test found it, so other tests' logging is unaffected."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in _ours(root):
        root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_calling_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    setup_logging("INFO")
    setup_logging("DEBUG", json_lines=True)
    setup_logging("INFO", json_lines=True)
    assert len(_ours(root)) == 1

    logging.getLogger("candidfashion.test").info("only once")
    lines = [line for line in capsys.readouterr().err.splitlines() if "only once" in line]
    assert len(lines) == 1


def test_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("candidfashion.demo").warning("catalog has %d products", 12)
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "candidfashion.demo: catalog has 12 products" in err


def test_level_filters_records(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("WARNING")
    log = logging.getLogger("candidfashion.test")
    log.info("hidden")
    log.warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "shown" in err


def test_json_lines_fields_and_extra(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", json_lines=True)
    logging.getLogger("candidfashion.api").info(
        "look %s", "abc", extra={"look_id": "abc", "items": 3, "path": object()}
    )
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "candidfashion.api"
    assert entry["message"] == "look abc"
    assert entry["look_id"] == "abc"
    assert entry["items"] == 3
    # Objects JSON cannot encode are written as text instead of breaking the log call.
    assert entry["path"].startswith("<object object")
    assert entry["timestamp"].endswith("+00:00")
    assert "exception" not in entry


def test_json_lines_exception(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", json_lines=True)
    try:
        raise RuntimeError("model file missing")
    except RuntimeError:
        logging.getLogger("candidfashion.parse").exception("could not load")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["message"] == "could not load"
    assert "Traceback" in entry["exception"]
    assert "RuntimeError: model file missing" in entry["exception"]


def test_extra_cannot_shadow_fixed_keys() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "real message", None, None)
    record.level = "FAKE"  # what extra={"level": ...} would do
    entry = json.loads(JsonLinesFormatter().format(record))
    assert entry["level"] == "INFO"
    assert entry["message"] == "real message"


def test_warnings_are_logged(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", json_lines=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old option", UserWarning, stacklevel=1)
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["logger"] == "py.warnings"
    assert "old option" in entry["message"]


@pytest.mark.parametrize("bad", ["LOUD", "", True, -1])
def test_bad_level_is_a_clear_error(bad: object) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(LogConfigError, match="level"):
        setup_logging(bad)  # type: ignore[arg-type]
    # A failed call changes nothing.
    assert root.handlers == before
    assert issubclass(LogConfigError, ValueError)


def test_numeric_level_and_warn_alias() -> None:
    setup_logging(logging.ERROR)
    assert logging.getLogger().level == logging.ERROR
    setup_logging("warn")
    assert logging.getLogger().level == logging.WARNING
