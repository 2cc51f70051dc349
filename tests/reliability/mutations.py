"""Seeded mutations of real SFC objects: upstream's examples (`lab/manifests/upstream/`) and the lab's manifests
(`lab/chains.py`, `lab/service_pods.py`), DPUServiceInterface / DPUServiceChain / DPUServiceIPAM.

Each base object is first made to fit one bed without touching anything else there: its nodeSelector picks the
bed's DPUs, its label values and chain selectors get a per-base prefix (so it never matches the live chain's
objects), a physical interface names its own netdev, a chain's selectors name the per-base anchor
interfaces (`Anchor`), so every unmutated base can actually become Ready. Then one thing is broken, with the
field path it broke, and whether the result is still valid (only an unknown field the apiserver prunes is).

Pure: no I/O beyond reading the manifests and CRD schemas; the same seed gives the same mutations.
"""

from __future__ import annotations

import copy
import itertools
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpf.lab import chains, service_pods

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "lab" / "manifests" / "upstream"
CRDS = REPO / "packaging" / "crds"
KINDS = {"DPUServiceInterface": "dpuserviceinterfaces", "DPUServiceChain": "dpuservicechains",
         "DPUServiceIPAM": "dpuserviceipams"}
OUT_OF_RANGE = (2**31, 2**53 + 1, -1, -(2**31) - 1)
HUGE = 64 * 1024
JUNK = "fuzzJunk"
BAD_LABEL_KEY = "bad key!/x"
# Port names the agent derives for pf/vf interfaces (agent/sfc/desired.py port_name); the bed makes them exist.
DERIVED_NETDEVS = ("pf0hpf", "pf1hpf", "pf0vf2")

Obj = dict[str, Any]
Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Base:
    """One normalised object of the fuzz corpus."""

    source: str
    """Where it comes from, e.g. `examples/hbn_only.yaml` or `lab/hbn_only.yaml`."""
    index: int
    obj: Obj
    anchors: tuple[Anchor, ...] = ()

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def label(self) -> str:
        return f"{self.source}:{self.kind}/{self.obj['metadata']['name']}"


@dataclass(frozen=True)
class Anchor:
    """A physical interface a chain base's selector resolves to (one per distinct selector of the chain)."""

    name: str
    netdev: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Mutation:
    base: Base
    op: str
    """What was done, e.g. `int 2147483648`, `huge string`, `junk field (strict)`."""
    path: Path_
    """The mutated field, from the object root."""
    obj: Obj
    valid: bool = False
    """True when the object still means what its base means (an unknown field the apiserver prunes)."""
    strict: bool = True
    """Send with fieldValidation=Strict (kubectl's default) rather than Ignore."""
    names: tuple[str, ...] = field(default_factory=tuple)
    """Strings, any of which in a message names the mutated field."""

    @property
    def kind(self) -> str:
        return self.base.kind

    @property
    def field_path(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out

    def describe(self) -> str:
        return f"{self.base.label} {self.op} at {self.field_path}"


# -- the corpus --------------------------------------------------------------------------------------------


def _svc_objects(docs: list[Obj]) -> list[Obj]:
    return [d for d in docs if d and d.get("kind") in KINDS]


def raw_corpus() -> list[tuple[str, Obj]]:
    """(source, object) for every SFC object of upstream's examples and of the lab's manifests."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        out += [(f"examples/{path.name}", d) for d in _svc_objects(list(yaml.safe_load_all(path.read_text())))]
    out += [("lab/hbn_only.yaml", d) for d in _svc_objects(chains.hbn_only("x", "x"))]
    out += [("lab/service_pods.yaml", d) for d in _svc_objects(service_pods.manifests("x", "x"))]
    return out


def _template_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def _prefixed(value: str, tag: str) -> str:
    return f"{tag}-{value}"[:63].rstrip("-_.")


def normalise(source: str, raw: Obj, index: int, namespace: str, group: str) -> Base:
    """`raw` made to fit the bed on its own (see the module docstring)."""
    obj = copy.deepcopy(raw)
    tag = f"fz{index}"
    obj["metadata"] = {"name": raw["metadata"]["name"], "namespace": namespace}
    anchors: list[Anchor] = []
    kind = obj["kind"]
    if kind == "DPUServiceIPAM":
        obj["spec"]["nodeSelector"] = {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": chains.GROUP_LABEL, "operator": "In", "values": [group]}]}]}
        obj["spec"].pop("metadata", None)
        return Base(source, index, obj)
    set_spec = _template_spec(obj)
    set_spec["nodeSelector"] = {"matchLabels": {chains.GROUP_LABEL: group}}
    inner = set_spec["template"]
    if kind == "DPUServiceInterface":
        meta = inner.setdefault("metadata", {}) or {}
        inner["metadata"] = meta
        meta["labels"] = {k: _prefixed(str(v), tag) for k, v in (meta.get("labels") or {}).items()}
        spec = inner["spec"]
        if spec.get("interfaceType") == "physical":
            spec["physical"]["interfaceName"] = f"fzd{index}"
        if spec.get("interfaceType") == "service":
            spec["service"]["serviceID"] = f"fz-{spec['service']['serviceID']}"[:63]
        return Base(source, index, obj)
    # DPUServiceChain: every distinct selector gets its own anchor interface.
    by_selector: dict[tuple[tuple[str, str], ...], Anchor] = {}
    for switch in inner["spec"]["switches"]:
        for port in switch["ports"]:
            selector = port["serviceInterface"]["matchLabels"]
            labels = tuple(sorted((k, _prefixed(str(v), tag)) for k, v in selector.items()))
            if labels not in by_selector:
                n = len(by_selector)
                by_selector[labels] = Anchor(f"fz-anchor-{index}-{n}", f"fza{index}x{n}", labels)
            port["serviceInterface"]["matchLabels"] = dict(labels)
    anchors = list(by_selector.values())
    return Base(source, index, obj, tuple(anchors))


def corpus(namespace: str, group: str) -> list[Base]:
    """Every distinct base once (the lab's hbn_only objects equal upstream's once normalised)."""
    seen: set[str] = set()
    bases: list[Base] = []
    for source, raw in raw_corpus():
        # Upstream's examples have no vf interface; the issue's first report is one: add the vf form of a pf.
        variants = [raw]
        pf = (((raw.get("spec") or {}).get("template") or {}).get("spec") or {}).get("template", {}).get("spec", {})
        if raw["kind"] == "DPUServiceInterface" and pf.get("interfaceType") == "pf" and pf["pf"]["pfID"] == 0:
            vf = copy.deepcopy(raw)
            vf["metadata"]["name"] = raw["metadata"]["name"].replace("pf0-rep", "vf2-rep")
            vf["spec"]["template"]["spec"]["template"]["spec"] = {"interfaceType": "vf", "vf": {"pfID": 0, "vfID": 2}}
            variants.append(vf)
        for variant in variants:
            key = yaml.safe_dump({"k": variant["kind"], "s": _shape(variant)}, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            bases.append(normalise(source, variant, len(bases), namespace, group))
    return bases


def _shape(obj: Obj) -> Any:
    """What makes two bases the same test: the spec without node selection (which normalise replaces)."""
    spec = copy.deepcopy(obj.get("spec") or {})
    spec.pop("nodeSelector", None)
    if "template" in spec:
        spec["template"].get("spec", {}).pop("nodeSelector", None)
    return spec


def anchor_object(anchor: Anchor, namespace: str, group: str) -> Obj:
    return {"apiVersion": "svc.dpu.nvidia.com/v1alpha1", "kind": "DPUServiceInterface",
            "metadata": {"name": anchor.name, "namespace": namespace},
            "spec": {"template": {"spec": {
                "nodeSelector": {"matchLabels": {chains.GROUP_LABEL: group}},
                "template": {"metadata": {"labels": dict(anchor.labels)},
                             "spec": {"interfaceType": "physical", "physical": {"interfaceName": anchor.netdev}}}}}}}


def netdevs(bases: list[Base]) -> list[str]:
    """Every netdev the bases name: what the bed creates (veths) on each DPU so valid bases can be Ready."""
    out = list(DERIVED_NETDEVS)
    for base in bases:
        out += [a.netdev for a in base.anchors]
        if base.kind == "DPUServiceInterface":
            spec = _template_spec(base.obj)["template"]["spec"]
            if spec.get("interfaceType") == "physical":
                out.append(spec["physical"]["interfaceName"])
    return sorted(set(out))


# -- schema walk -------------------------------------------------------------------------------------------


def crd_schema(kind: str) -> Obj:
    doc = yaml.safe_load((CRDS / f"svc.dpu.nvidia.com_{KINDS[kind]}.yaml").read_text())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@dataclass(frozen=True)
class Site:
    path: Path_
    value: Any
    schema: Obj
    required: bool
    in_label_map: bool
    in_node_selector: bool


def sites(obj: Obj, schema: Obj) -> Iterator[Site]:
    """Every node under `spec` of `obj`, with its schema."""
    def walk(value: Any, node: Obj, path: Path_, required: bool, label_map: bool, selector: bool) -> Iterator[Site]:
        yield Site(path, value, node, required, label_map, selector)
        if isinstance(value, dict):
            props, extra = node.get("properties") or {}, node.get("additionalProperties")
            for key, child in value.items():
                sub = props.get(key) or (extra if isinstance(extra, dict) else {})
                is_map = key not in props and isinstance(extra, dict)
                yield from walk(child, sub, (*path, key), key in (node.get("required") or ()), is_map,
                                selector or key == "nodeSelector")
        elif isinstance(value, list):
            for i, child in enumerate(value):
                yield from walk(child, node.get("items") or {}, (*path, i), False, False, selector)
    yield from walk(obj["spec"], schema["properties"]["spec"], ("spec",), True, False, False)


def _set(obj: Obj, path: Path_, value: Any) -> None:
    target: Any = obj
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def _delete(obj: Obj, path: Path_) -> None:
    target: Any = obj
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]


def _names(path: Path_, label_map: bool) -> tuple[str, ...]:
    """What a message must contain to name `path`: the leaf key; for a label, its map (labels/matchLabels) or the
    key itself; and the list-indexed path as the controller writes it (`switches[0].ports[1]`)."""
    keys = [p for p in path if isinstance(p, str)]
    names = {keys[-1]}
    if label_map and len(keys) >= 2:
        names.add(keys[-2])
    indexed = ""
    for prev, part in itertools.pairwise(path):
        if isinstance(part, int) and isinstance(prev, str):
            indexed += ("." if indexed else "") + f"{prev}[{part}]"
    if indexed:
        names.add(indexed)
    return tuple(sorted(names))


def candidates(base: Base) -> list[tuple[str, Path_, Any, bool, bool]]:
    """(op, path, new value or DELETE, valid, strict) for every mutation this base allows."""
    out: list[tuple[str, Path_, Any, bool, bool]] = []
    for site in sites(base.obj, crd_schema(base.kind)):
        kind, path, key = site.schema.get("type"), site.path, site.path[-1]
        if site.in_node_selector:
            if key == "nodeSelector":
                out += _bad_selectors(base, path)
            continue
        if kind == "integer":
            out += [(f"int {v}", path, v, False, True) for v in OUT_OF_RANGE]
            out.append(("wrong type (string for integer)", path, "seven", False, True))
        elif kind == "string" and not site.in_label_map:
            out.append(("huge string", path, "x" * HUGE, False, True))
            out.append(("empty string", path, "", False, True))
            out.append(("wrong type (integer for string)", path, 12345, False, True))
        elif kind == "string" and site.in_label_map:
            out.append(("huge label value", path, "v" * HUGE, False, True))
            if "matchLabels" in path:  # a selector value that matches nothing: the chain must say which port
                out.append(("empty selector value", path, "", False, True))
        elif kind == "object" and isinstance(site.value, dict):
            if path != ("spec",):
                out.append(("wrong type (list for object)", path, ["x"], False, True))
            if site.schema.get("properties"):  # a struct, not a map: a key it does not know is junk
                out.append(("junk field (strict)", (*path, JUNK), {"a": 1}, False, True))
                if _can_be_ready(base):
                    out.append(("junk field (pruned)", (*path, JUNK), {"a": 1}, True, False))
            if key in ("labels", "matchLabels"):
                out.append(("invalid label key", (*path, BAD_LABEL_KEY), "v", False, True))
        elif kind == "array":
            out.append(("wrong type (object for list)", path, {"x": 1}, False, True))
            out.append(("empty list", path, [], False, True))
        if site.required and path != ("spec",) and not isinstance(key, int):
            out.append(("missing required field", path, DELETE, False, True))
        if key in ("physical", "pf", "vf", "service"):  # required by the interfaceType (CEL), not the schema
            out.append(("missing field its interfaceType needs", path, DELETE, False, True))
    return out


def _can_be_ready(base: Base) -> bool:
    """A `service` interface waits for its pod, which the bed does not run: it is never Ready, so a valid mutation of
    it proves nothing."""
    if base.kind != "DPUServiceInterface":
        return True
    return _template_spec(base.obj)["template"]["spec"].get("interfaceType") != "service"


def _bad_selectors(base: Base, path: Path_) -> list[tuple[str, Path_, Any, bool, bool]]:
    group = chains.GROUP_LABEL
    if base.kind == "DPUServiceIPAM":
        term = (*path, "nodeSelectorTerms", 0, "matchExpressions", 0)
        return [("invalid selector operator", (*term, "operator"), "Bogus", False, True),
                ("invalid selector key", (*term, "key"), BAD_LABEL_KEY, False, True)]
    return [("invalid selector key", (*path, "matchLabels", BAD_LABEL_KEY), "x", False, True),
            ("invalid selector operator", (*path, "matchExpressions"),
             [{"key": group, "operator": "Bogus", "values": ["x"]}], False, True),
            ("selector In without values", (*path, "matchExpressions"),
             [{"key": group, "operator": "In", "values": []}], False, True)]


DELETE = object()


def mutate(base: Base, op: str, path: Path_, value: Any, valid: bool, strict: bool, name: str) -> Mutation:
    obj = copy.deepcopy(base.obj)
    obj["metadata"]["name"] = name
    if value is DELETE:
        _delete(obj, path)
    else:
        _set(obj, path, copy.deepcopy(value))
    label_map = any(k in ("labels", "matchLabels") for k in path[-2:-1]) or op == "invalid label key"
    names = _names(path, label_map)
    if "selector" in op:  # a bad selector is named by the selector field, or the part of it that is bad
        names = tuple(sorted({*names, "nodeSelector", "matchExpressions", "matchLabels"}))
    return Mutation(base, op, path, obj, valid, strict, names)


def category(op: str) -> str:
    """The class an op belongs to, so each class is drawn equally often whatever the number of sites it has."""
    for prefix, name in (("int ", "out-of-range number"), ("huge", "huge string"), ("junk", "unknown field"),
                         ("wrong type", "wrong type"), ("missing", "missing field"), ("empty", "empty value")):
        if op.startswith(prefix):
            return name
    return "invalid labels or selector"


def generate(bases: list[Base], count: int, seed: int) -> list[list[Mutation]]:
    """`count` mutations in batches; a batch holds at most one mutation per base (so no two fuzz objects in a
    batch compete for a port), bases in random order, each mutation's class drawn at random first and then a
    site of that class (without repeats until a class's sites are used up). Deterministic in `seed`."""
    rng = random.Random(seed)
    pools: dict[tuple[int, str], list[tuple[str, Path_, Any, bool, bool]]] = {}
    for base in bases:
        for cand in candidates(base):
            pools.setdefault((base.index, category(cand[0])), []).append(cand)
    remaining = {key: rng.sample(pool, len(pool)) for key, pool in pools.items()}
    batches: list[list[Mutation]] = []
    made = 0
    while made < count:
        batch = []
        for base in rng.sample(bases, len(bases)):
            if made >= count:
                break
            classes = sorted(c for i, c in pools if i == base.index)
            # Out-of-range numbers weigh triple: few fields are numbers, and they are what broke whole nodes.
            key = (base.index, rng.choices(classes, [3 if c == "out-of-range number" else 1 for c in classes])[0])
            if not remaining[key]:
                remaining[key] = rng.sample(pools[key], len(pools[key]))
            op, path, value, valid, strict = remaining[key].pop()
            batch.append(mutate(base, op, path, value, valid, strict, f"fz-{made:04d}-{_suffix(rng)}"))
            made += 1
        batches.append(batch)
    return batches


def _suffix(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(4))
