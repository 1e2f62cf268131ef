"""Logging setup: structlog, JSON under systemd, readable on a terminal.

One event name per line (`job.finished`, `plc.offline`) with key-value fields;
units in field names (`timeout_s`). Nothing here logs tickets or passwords: the
callers never pass them.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once for the process.

    JSON lines when `json` is true, or when it is None and the process runs under
    systemd (JOURNAL_STREAM set) or stderr is not a terminal.
    """
    if json is None:
        json = bool(os.environ.get("JOURNAL_STREAM")) or not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pymodbus logs through the standard library; keep its chatter out of ours.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
