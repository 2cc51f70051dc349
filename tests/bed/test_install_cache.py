"""The install step's cache housekeeping: builds of pins that moved on age out; what is in use stays."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_install():
    spec = importlib.util.spec_from_file_location("dpf_install", REPO / "packaging" / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_unused_old_builds_of_the_same_module_are_pruned(tmp_path: Path, capsys) -> None:
    install = load_install()
    bin_dir = tmp_path / "bin"
    old_days = install.STALE_DAYS + 1
    current, stale, recent, other = (bin_dir / n for n in ("etcd-new", "etcd-old", "etcd-recent", "cni-old"))
    for entry in (current, stale, recent, other):
        entry.mkdir(parents=True)
        (entry / "etcd").write_bytes(b"x" * 1000)
    ancient = time.time() - old_days * 86400
    for entry in (current, stale, other):
        os.utime(entry, (ancient, ancient))  # current is old too: being kept is what saves it

    install.prune_stale(bin_dir, {current}, "etcd-*")

    assert sorted(p.name for p in bin_dir.iterdir()) == ["cni-old", "etcd-new", "etcd-recent"]
    assert f"removed {stale}" in capsys.readouterr().out
