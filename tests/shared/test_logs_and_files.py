"""The shared runtime's logging and atomic files, as the controller and the agents use them."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from dpf.shared.atomic import quarantine, remove_temp, write_atomic
from dpf.shared.logs import JsonFormatter


def test_json_log_lines_keep_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("dpf.x", logging.ERROR, __file__, 1, "reconcile %s failed", ("a/b",),
                                   exc_info=sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "reconcile a/b failed"
    assert line["level"] == "error"
    assert line["logger"] == "dpf.x"
    assert "RuntimeError: boom" in line["exc"]


def test_json_log_lines_without_exception_have_no_exc_key() -> None:
    record = logging.LogRecord("dpf.x", logging.INFO, __file__, 1, "hello", (), None)
    assert "exc" not in json.loads(JsonFormatter().format(record))


def test_write_atomic_replaces_the_whole_file_private_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"old contents that are longer")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_crash_leftover_temp_is_removed_and_a_bad_file_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    (tmp_path / ".leases.json.tmp").write_bytes(b"torn")
    remove_temp(path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"{not json")
    aside = quarantine(path, "corrupt-1")
    assert aside.name == "leases.json.corrupt-1"
    assert aside.read_bytes() == b"{not json"
    assert not path.exists()


def test_write_atomic_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "x", b"")
