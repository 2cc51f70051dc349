"""The install step's cache housekeeping: builds of pins that moved on age out; what is in use stays."""

from __future__ import annotations

import importlib.util
import json
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


def test_an_on_demand_module_is_built_only_when_named(tmp_path: Path, monkeypatch, capsys) -> None:
    """`./dev setup` links every module but kwok (on demand: the provisioning bench names it)."""
    install = load_install()
    upstream, tools = tmp_path / "upstream", tmp_path / "tools"
    for name, extra in (("etcd", {}), ("kwok", {"on_demand": True})):
        module = upstream / name
        module.mkdir(parents=True)
        (module / "go.mod").write_text(f"module dpf.local/upstream/{name}\n")
        (module / "go.sum").write_text("")
        (module / "build.json").write_text(json.dumps({"binaries": {name: f"example.com/{name}"}, **extra}))
    monkeypatch.setattr(install, "UPSTREAM", upstream)
    monkeypatch.setattr(install, "TOOLS_DIR", tools)
    monkeypatch.setattr(install, "CACHE", tmp_path / "cache")
    for name in ("etcd", "kwok"):  # cache hits: no Go toolchain needed
        out = install.module_cache_dir(upstream / name)
        out.mkdir(parents=True)
        (out / name).write_text("binary")

    install.ensure_go_components()
    assert sorted(p.name for p in tools.iterdir()) == ["etcd"]

    install.ensure_go_components("kwok")
    assert sorted(p.name for p in tools.iterdir()) == ["etcd", "kwok"]
    assert "kwok: kwok (cache hit)" in capsys.readouterr().out
