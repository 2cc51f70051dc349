"""Parse and validate one CNI request (env + stdin netconf) into a frozen `Request`: pure, no I/O.

Accepts the ovs-cni style netconf DPF users already have in their NetworkAttachmentDefinitions
(`bridge`, `interface_type`, `mtu`, `vlan`, `trunk`, `ofport_request`, `ipam`), per-pod args from
`CNI_ARGS` (`K8S_POD_*`, `MAC`, `IP`), Multus `args.cni` (`mac`, `ips`, and nv-ipam's `poolNames`,
`poolType`, `allocateDefaultGateway`) and `runtimeConfig` (`mac`, `ips`). Every refusal is a
`ConfigError`/`EnvError` whose message names the field and what would be valid.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from dpf.agent.cni.errors import CniError, ConfigError, EnvError
from dpf.cni import wire

IN_AGENT_IPAM = ("dpf-ipam", "nv-ipam")
"""IPAM types the agent serves itself from the node's pool blocks; any other type is delegated."""
INTERFACE_TYPES = ("", "system", "afxdp")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_OVS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


@dataclass(frozen=True)
class PodRef:
    namespace: str = ""
    name: str = ""
    uid: str = ""

    @property
    def known(self) -> bool:
        return bool(self.namespace and self.name)


@dataclass(frozen=True)
class IpamConf:
    type: str
    pools: tuple[str, ...] = ()
    pool_type: str = "ippool"
    allocate_default_gateway: bool = False

    @property
    def in_agent(self) -> bool:
        return self.type in IN_AGENT_IPAM


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str

    @property
    def key(self) -> str:
        return f"{self.container_id}/{self.ifname}"


@dataclass(frozen=True)
class Request:
    command: str
    version: str
    name: str
    plugin: str
    ipam_only: bool
    """Invoked as an IPAM plugin (type `dpf-ipam`) by some other main plugin."""
    container_id: str = ""
    ifname: str = ""
    netns: str = ""
    cni_path: str = ""
    bridge: str = ""
    interface_type: str = ""
    mtu: int | None = None
    vlan: int | None = None
    trunks: tuple[int, ...] = ()
    ofport_request: int | None = None
    ipam: IpamConf | None = None
    mac: str | None = None
    ips: tuple[str, ...] = ()
    pod: PodRef = PodRef()
    prev_result: dict | None = None
    valid_attachments: tuple[Attachment, ...] = ()
    raw_config: str = ""
    env: tuple[tuple[str, str], ...] = ()

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.container_id, self.ifname)


def parse(command: str, env: dict[str, str], raw: str, plugin: str) -> Request:
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CniError(wire.DECODE_FAILURE, f"stdin is not JSON: {exc.msg} at {exc.pos}") from exc
    if not isinstance(conf, dict):
        raise CniError(wire.DECODE_FAILURE, "stdin is not a JSON object")
    version = conf.get("cniVersion")
    if version not in wire.SUPPORTED_VERSIONS:
        raise CniError(wire.INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported; use one of "
                       f"{', '.join(wire.SUPPORTED_VERSIONS)}", "field cniVersion")
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("name", "the network name is required")
    ipam_raw = _opt(conf, "ipam", dict) or {}
    ipam_only = bool(plugin) and plugin != conf.get("type") and plugin == ipam_raw.get("type")
    cni_args = _cni_args(env.get("CNI_ARGS", ""))
    args_cni = _opt(_opt(conf, "args", dict) or {}, "cni", dict, "args.cni") or {}
    runtime = _opt(conf, "runtimeConfig", dict) or {}
    fields: dict[str, Any] = {
        "command": command, "version": version, "name": name, "plugin": plugin, "ipam_only": ipam_only,
        "raw_config": raw, "env": tuple(sorted(env.items())),
        "container_id": env.get("CNI_CONTAINERID", ""), "ifname": env.get("CNI_IFNAME", ""),
        "netns": env.get("CNI_NETNS", ""), "cni_path": env.get("CNI_PATH", ""),
        "pod": PodRef(cni_args.get("K8S_POD_NAMESPACE", ""), cni_args.get("K8S_POD_NAME", ""),
                      cni_args.get("K8S_POD_UID", "")),
        "prev_result": _opt(conf, "prevResult", dict),
        "mac": _mac(runtime, args_cni, cni_args),
        "ips": _ips(runtime, args_cni, cni_args),
        "ipam": _ipam(ipam_raw, args_cni) if ipam_raw.get("type") else None,
    }
    _check_env(command, fields)
    if command == "GC":
        fields["valid_attachments"] = _valid_attachments(conf)
    if not ipam_only:
        fields.update(_switch_fields(conf, command))
    return Request(**fields)


def _check_env(command: str, fields: dict[str, Any]) -> None:
    if command not in ("ADD", "DEL", "CHECK"):
        return
    if not fields["container_id"]:
        raise EnvError("CNI_CONTAINERID", "required for " + command)
    if not _IFNAME.match(fields["ifname"]):
        raise EnvError("CNI_IFNAME", f"{fields['ifname']!r} is not a valid interface name (1-15 chars, no / : space)")
    if command != "DEL" and not fields["netns"]:
        raise EnvError("CNI_NETNS", "required for " + command)


def _switch_fields(conf: dict, command: str) -> dict[str, Any]:
    bridge = conf.get("bridge")
    if command in ("ADD", "CHECK", "STATUS") and (not isinstance(bridge, str) or not _OVS_NAME.match(bridge)):
        raise ConfigError("bridge", f"{bridge!r} is not an OVS bridge name; set e.g. \"bridge\": \"br-sfc\"")
    itype = conf.get("interface_type") or ""
    if itype not in INTERFACE_TYPES:
        raise ConfigError("interface_type", f"{itype!r} is not supported for veth attachments; use one of "
                          "system, afxdp or leave it out (dpdk needs an SF representor)")
    mtu = _int(conf, "mtu", 68, 65535)
    vlan = _int(conf, "vlan", 0, 4095)
    ofport = _int(conf, "ofport_request", 1, 65279)
    return {"bridge": bridge if isinstance(bridge, str) else "", "interface_type": itype, "mtu": mtu,
            "vlan": vlan, "ofport_request": ofport, "trunks": _trunks(conf.get("trunk"))}


def _opt(conf: dict, key: str, kind: type, path: str | None = None) -> Any:
    value = conf.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise ConfigError(path or key, f"must be a JSON {'object' if kind is dict else kind.__name__}")
    return value


def _int(conf: dict, key: str, lo: int, hi: int) -> int | None:
    value = conf.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(key, f"{value!r} must be an integer in {lo}..{hi}")
    return value


def _trunks(raw: Any) -> tuple[int, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("trunk", "must be a list of {\"id\": N} or {\"minID\": A, \"maxID\": B}")
    out: set[int] = set()
    for i, item in enumerate(raw):
        path = f"trunk[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(path, "must be an object")
        if "id" in item:
            out.add(_int(item, "id", 0, 4095) or 0)
        else:
            lo, hi = _int(item, "minID", 0, 4095), _int(item, "maxID", 0, 4095)
            if lo is None or hi is None or lo > hi:
                raise ConfigError(path, "needs id, or minID <= maxID")
            out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def _cni_args(raw: str) -> dict[str, str]:
    out = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EnvError("CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def _mac(runtime: dict, args_cni: dict, cni_args: dict[str, str]) -> str | None:
    for path, value in (("runtimeConfig.mac", runtime.get("mac")), ("args.cni.mac", args_cni.get("mac")),
                        ("CNI_ARGS MAC", cni_args.get("MAC"))):
        if value:
            if not isinstance(value, str) or not _MAC.match(value):
                raise ConfigError(path, f"{value!r} is not a MAC address like 02:00:00:00:00:01")
            return value.lower()
    return None


def _ips(runtime: dict, args_cni: dict, cni_args: dict[str, str]) -> tuple[str, ...]:
    for path, value in (("runtimeConfig.ips", runtime.get("ips")), ("args.cni.ips", args_cni.get("ips")),
                        ("CNI_ARGS IP", cni_args.get("IP", "").split(",") if cni_args.get("IP") else None)):
        if value:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(path, "must be a list of IP addresses")
            for v in value:
                try:
                    ipaddress.ip_interface(v)
                except ValueError as exc:
                    raise ConfigError(path, f"{v!r} is not an IP address") from exc
            return tuple(value)
    return ()


def _ipam(raw: dict, args_cni: dict) -> IpamConf:
    kind = raw["type"]
    if not isinstance(kind, str):
        raise ConfigError("ipam.type", "must be a string")
    if kind not in IN_AGENT_IPAM:
        return IpamConf(type=kind)
    pools: Any = args_cni.get("poolNames")
    path = "args.cni.poolNames"
    if not pools:
        pools, path = raw.get("poolNames") or raw.get("poolName"), "ipam.poolName"
    if isinstance(pools, str):
        pools = [p.strip() for p in pools.split(",") if p.strip()]
    if not pools or not isinstance(pools, list) or not all(isinstance(p, str) and p for p in pools):
        raise ConfigError(path, "name the pool(s) to allocate from, e.g. \"poolName\": \"pool1\" "
                          "(or args.cni.poolNames)")
    pool_type = str(args_cni.get("poolType") or raw.get("poolType") or "ippool").lower()
    if pool_type not in ("ippool", "cidrpool"):
        raise ConfigError("ipam.poolType", f"{pool_type!r} must be ippool or cidrpool")
    gateway = args_cni.get("allocateDefaultGateway", raw.get("allocateDefaultGateway", False))
    if not isinstance(gateway, bool):
        raise ConfigError("args.cni.allocateDefaultGateway", "must be true or false")
    if gateway and len(pools) != 1:
        raise ConfigError("args.cni.allocateDefaultGateway", "needs exactly one pool")
    return IpamConf(type=kind, pools=tuple(dict.fromkeys(pools)), pool_type=pool_type,
                    allocate_default_gateway=gateway)


def _valid_attachments(conf: dict) -> tuple[Attachment, ...]:
    raw = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments", []))
    if not isinstance(raw, list):
        raise ConfigError("cni.dev/valid-attachments", "must be a list")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("containerID") or not item.get("ifname"):
            raise ConfigError(f"cni.dev/valid-attachments[{i}]", "needs containerID and ifname")
        out.append(Attachment(str(item["containerID"]), str(item["ifname"])))
    return tuple(out)
