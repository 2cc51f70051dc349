"""Project invariants a newcomer relies on: the README's commands are CI's, and imports live under `dpf.`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = readme_quick_start_commands()
    assert commands == ["./dev lab", "./dev test"]
    ci = (REPO / ".ci" / "run").read_text()
    exec_lines = [line.strip() for line in ci.splitlines() if line.strip().startswith("exec ")]
    assert exec_lines == ["exec ./dev test"]


def test_nothing_importable_under_generic_top_level_names(tmp_path: Path) -> None:
    # Run outside the checkout so only site-packages (and the editable finder) can answer.
    probe = (
        "import importlib.util, json, dpf.agent, dpf.controller, dpf.cni, dpf.proto, dpf.lab\n"
        "generic = ['agent', 'controller', 'cni', 'proto', 'lab', 'bed', 'tests']\n"
        "print(json.dumps({'found': [n for n in generic if importlib.util.find_spec(n)],\n"
        "                  'agent': dpf.agent.__file__}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout
    result = __import__("json").loads(out)
    assert result["found"] == []
    assert Path(result["agent"]) == REPO / "agent" / "__init__.py"


def test_install_is_a_cache_hit_the_second_time() -> None:
    install = [sys.executable, str(REPO / "packaging" / "install.py"), "--skip-apt"]
    subprocess.run(install, capture_output=True, timeout=300, check=True)  # may do work: first run after a change
    out = subprocess.run(install, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "virtualenv: up to date (cache hit)" in out
    for module in ("cni", "etcd", "kubernetes"):
        assert re.search(rf"go: {module}: .*\(cache hit\)", out), out


def test_install_names_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin", "DPF_CACHE": str(tmp_path / "empty-cache")}
    result = subprocess.run([sys.executable, str(REPO / "packaging" / "install.py"), "--skip-apt"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    assert "`go` is not on PATH" in result.stderr
