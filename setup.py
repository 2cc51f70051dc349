"""Map the repository's top-level folders under the single import root `dpf`.

The design keeps `controller/`, `agent/`, `cni/`, `proto/`, `lab/` and `ctl/` as top-level folders,
but nothing may be importable under generic names such as `agent` or `proto`. setuptools'
`package_dir` does the mapping; subpackages are discovered here so the list cannot drift.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "dpf": "dpf",
    "dpf.controller": "controller",
    "dpf.agent": "agent",
    "dpf.cni": "cni",
    "dpf.proto": "proto",
    "dpf.lab": "lab",
    "dpf.shared": "shared",
    "dpf.ctl": "ctl",
}


def discover_packages() -> list[str]:
    found = []
    for package, folder in ROOTS.items():
        base = Path(folder)
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            found.append(".".join([package, *rel.parts]) if rel.parts else package)
    return found


setup(package_dir=ROOTS, packages=discover_packages(), package_data={"dpf.controller": ["crds/*.yaml"]})
