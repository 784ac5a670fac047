"""One logging configuration for the CLI, the web app and the workers (standard library only).

``setup_logging`` installs a single handler on the root logger: human-readable lines for a
terminal, or one JSON object per line for servers whose logs a collector parses. Calling it
again replaces that handler instead of adding a second one, so records are never duplicated.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonLinesFormatter", "LogConfigError", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: frozenset[str] = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

#: Libraries that log every request or connection at INFO; quieter unless DEBUG is asked for.
_CHATTY_LOGGERS = ("httpx", "httpcore", "urllib3", "PIL", "matplotlib", "asyncio")


class LogConfigError(ValueError):
    """A logging setting that cannot be applied (for example an unknown level name)."""


class JsonLinesFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line.

    Keys: ``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, every
    field passed through ``extra=``, and ``exception`` / ``stack`` when present. Values JSON
    cannot encode are written as their ``str()`` so a log call never fails on them.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            # Extra fields may not shadow the fixed keys a log collector relies on.
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time.

    Test runners and CLI harnesses swap ``sys.stderr``; a handler that captured the stream
    object at setup would keep writing to a closed one afterwards.
    """

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        # StreamHandler.__init__ assigns a stream; the property always follows sys.stderr.
        pass


def _parse_level(level: str | int) -> int:
    if isinstance(level, bool):
        raise LogConfigError(f"log level must be a name or a number, not {level!r}")
    if isinstance(level, int):
        if level < 0:
            raise LogConfigError(f"log level must not be negative, got {level}")
        return level
    name = str(level).strip().upper()
    if name == "WARN":
        name = "WARNING"
    value = logging.getLevelNamesMapping().get(name)
    if value is None:
        raise LogConfigError(
            f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return value


def setup_logging(level: str | int = "INFO", json_lines: bool = False) -> logging.Handler:
    """Configure the root logger once; calling again swaps the format and level in place.

    ``level`` is a level name (case-insensitive) or number; ``json_lines`` selects the JSON
    formatter. Returns the installed handler (useful to tests and embedding applications).
    Raises :class:`LogConfigError` for an unknown level.
    """
    numeric = _parse_level(level)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _StderrHandler):
            root.removeHandler(existing)
            existing.close()

    handler = _StderrHandler()
    if json_lines:
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, datefmt=TEXT_DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(numeric)

    # Propagated records skip the root's level check, so the quiet level must not undercut it.
    chatty_level = logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(chatty_level)
    # warnings.warn(...) output goes through the same handler and format.
    logging.captureWarnings(True)
    return handler
