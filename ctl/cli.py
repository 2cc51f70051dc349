"""`dpfctl`: look at DPF objects in the host cluster. `dpfctl describe` prints DPUSet → DPUs → phase, the
conditions that are not True and flash progress, as text (a tree) or JSON (docs/dpfctl.md)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

from dpf.controller.kube.rest import Rest
from dpf.ctl import describe
from dpf.ctl.kube import DPU, DPU_SET, CtlError, Obj, connect, get_object, list_objects, resolve

EPILOG = """\
examples:
  dpfctl describe                       every DPUSet and DPU in the namespace
  dpfctl describe -A -o json            every namespace, as JSON
  dpfctl describe dpuset hbn-dpuset     one DPUSet and its DPUs
  dpfctl describe dpu worker1-0000-08-00

The tree shows each DPUSet with its DPUs' phases per phase, each DPU with its phase and Ready condition, and
under each object the conditions that are not True (type, status, reason, age, message). While a DPU is in
"OS Installing", the OSInstalled message carries the flash progress. DPUs that belong to no DPUSet are listed
last. Exit status: 0 when everything was read, 1 on an error (no kubeconfig, CRDs missing, forbidden, ...).
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dpfctl", description="Inspect DPF (DOCA Platform Framework) objects.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd = commands.add_parser("describe", help="DPUSets → DPUs → phase, non-True conditions, flash progress",
                              description="Describe DPU provisioning as a tree, like `clusterctl describe`.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("kind", nargs="?", choices=("dpuset", "dpu"),
                     help="describe one object (with NAME): a DPUSet and its DPUs, or one DPU under its DPUSet")
    cmd.add_argument("name", nargs="?", help="the object's name")
    cmd.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)")
    cmd.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    cmd.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    cmd.add_argument("--kubeconfig", type=Path,
                     help="kubeconfig file (default: first existing file of $KUBECONFIG, else ~/.kube/config)")
    cmd.add_argument("--context", help="kubeconfig context (default: its current-context)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if bool(args.kind) != bool(args.name):
        print(f"dpfctl: describe {args.kind or 'KIND'} needs a NAME (or neither: everything)", file=sys.stderr)
        return 2
    if args.name and args.all_namespaces:
        print("dpfctl: a NAME is looked up in one namespace; use -n, not -A", file=sys.stderr)
        return 2
    try:
        tree = asyncio.run(_read(args))
    except CtlError as exc:
        print(f"dpfctl: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        sys.stdout.write(json.dumps(tree.to_json(), indent=2) + "\n")
    else:
        sys.stdout.write(describe.render(tree, dt.datetime.now(dt.UTC), show_namespace=args.all_namespaces))
    return 0


async def _read(args: argparse.Namespace) -> describe.Tree:
    target = resolve(args.kubeconfig, args.context, args.namespace)
    namespace = None if args.all_namespaces else target.namespace
    rest = await connect(target)
    try:
        dpusets, dpus = await _objects(rest, args.kind, args.name, namespace, target.namespace)
    finally:
        await rest.close()
    tree = describe.build(dpusets, dpus)
    if args.kind == "dpuset":  # the named set only: its DPUs, no unrelated orphans
        return describe.Tree(tree.dpusets, ())
    return tree


async def _objects(rest: Rest, kind: str | None, name: str | None, namespace: str | None,
                   own_namespace: str) -> tuple[list[Obj], list[Obj]]:
    """What to build the tree from: a DPU with the DPUSet it belongs to (if any), a DPUSet with the DPUs of its
    namespace (build() keeps its own), or every DPUSet and DPU."""
    if kind == "dpu" and name:
        dpu = await get_object(rest, DPU, name, own_namespace)
        dpusets = [s for s in await list_objects(rest, DPU_SET, own_namespace)
                   if describe.build([s], [dpu]).dpusets[0].dpus]
        return dpusets, [dpu]
    if kind == "dpuset" and name:
        dpuset = await get_object(rest, DPU_SET, name, own_namespace)
        return [dpuset], await list_objects(rest, DPU, own_namespace)
    return await list_objects(rest, DPU_SET, namespace), await list_objects(rest, DPU, namespace)


if __name__ == "__main__":
    sys.exit(main())
