"""Log set-up shared by every dpf process: one flag pair, one text format, one JSON format.

JSON lines keep tracebacks (`exc`), so a crash logged through `log.exception` or `exc_info=` is not lost
when a site ships logs as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and exc when the record carries a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=LEVELS)
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="log line format")


def setup_logging(level: str, fmt: str) -> None:
    """Route every logger to stderr in `fmt` ("text" | "json") at `level`; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
