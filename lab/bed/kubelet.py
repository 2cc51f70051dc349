"""What `kubeadm join` and systemd do on a DPU: discover the cluster, then run containerd and a real kubelet.

From a join command (`kubeadm join <host:port> --token <id>.<secret> --discovery-token-ca-cert-hash sha256:<hex>`):
1. Discovery as kubeadm does it: an anonymous GET of `kube-public/cluster-info` (TLS not verified yet: we do not
   know the CA), the JWS signature `jws-kubeconfig-<id>` the bootstrap signer put there checked with the token's
   secret (proves the apiserver knows our token), then the CA's public-key hash against the pinned one. Any
   mismatch refuses the join (`JoinRefused`, naming what did not match) before anything starts.
2. A bootstrap kubeconfig with the token; the kubelet then gets its client certificate by CSR (approved by the
   cluster's CSR approver) and asks for a serving certificate (`serverTLSBootstrap`; approved by our controller).
3. containerd and kubelet in the DPU's network namespace, sharing one private mount namespace (a holder process
   made by `unshare --mount --propagation slave`, which both join with nsenter) where /var/lib/kubelet and
   /var/log/containers are bind-mounted per DPU: the kubelet hard-codes a few paths there that would otherwise be
   shared by every kubelet on the machine. Not `ip netns exec`: it remounts /sys and the kubelet then finds no
   cgroup mounts. Everything else is per DPU: containerd root/state/socket, runc root, kubelet root and cert
   dirs, CNI config and IPAM data, and a cgroup root created in every cgroup v1 hierarchy.

`stop()` undoes it all: kubelet and containerd stopped, every container and shim of this DPU killed, the cgroups
and the pods' netns files (`/run/netns/cni-*`) removed, and the kernel sysctls the kubelet changed on the host
(`vm.overcommit_memory`, `kernel.panic`, `kernel.panic_on_oops`) restored once the last kubelet stops.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import shlex
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dpf.lab.bed.images import BUSYBOX_IMAGE, build_busybox_image, import_image
from dpf.lab.bed.process import Child, wait_until
from dpf.lab.bed.tools import tool

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
HOST_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
SYSCTL_RECORDS = Path("/run/dpf-kubelet-sysctls")
# Paths the kubelet uses whatever its flags say (device-plugin socket, default cert dir, container log links).
PRIVATE_DIRS = ("/var/lib/kubelet", "/var/log/containers")
DISCOVERY_TIMEOUT = 60.0
BOOTSTRAP_USER = "tls-bootstrap-token-user"


class JoinRefused(RuntimeError):
    """The join command does not fit the cluster it points at (bad syntax, CA hash or token signature)."""


@dataclass(frozen=True)
class JoinCommand:
    endpoint: str  # host:port
    token_id: str
    token_secret: str
    ca_hashes: tuple[str, ...]  # "sha256:<hex>"

    @classmethod
    def parse(cls, command: str) -> JoinCommand:
        words = shlex.split(command)
        if words[:2] != ["kubeadm", "join"] or len(words) < 3:
            raise JoinRefused(f"not a `kubeadm join` command: {command!r}")
        endpoint, token, hashes = words[2], "", []
        rest = iter(words[3:])
        for word in rest:
            flag, _, value = word.partition("=")
            if flag in ("--token", "--discovery-token-ca-cert-hash") and not value:
                value = next(rest, "")
            if flag == "--token":
                token = value
            elif flag == "--discovery-token-ca-cert-hash":
                hashes.append(value)
        token_id, _, secret = token.partition(".")
        if not (len(token_id) == 6 and len(secret) == 16 and (token_id + secret).isalnum()):
            raise JoinRefused(f"join command has no bootstrap token [a-z0-9]{{6}}.[a-z0-9]{{16}}: {token!r}")
        if not hashes or not all(h.startswith("sha256:") and len(h) == 71 for h in hashes):
            raise JoinRefused("join command needs --discovery-token-ca-cert-hash sha256:<64 hex digits>")
        return cls(endpoint, token_id, secret, tuple(h.lower() for h in hashes))


def ca_public_key_hash(ca_pem: bytes) -> str:
    """kubeadm's CA pin: sha256 of the CA certificate's DER SubjectPublicKeyInfo."""
    spki = x509.load_pem_x509_certificate(ca_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _verify_jws(detached: str, content: str, join: JoinCommand) -> None:
    """A detached compact JWS (`header..signature`), HS256 keyed by the token secret, over `content`."""
    header_b64, empty, signature = ([*detached.split("."), "", ""])[:3]
    if empty:
        raise JoinRefused("cluster-info signature is not a detached JWS")
    try:
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    except ValueError:
        raise JoinRefused("cluster-info signature has an unreadable header") from None
    if header.get("alg") != "HS256" or header.get("kid") not in (None, join.token_id):
        raise JoinRefused(f"cluster-info signature header {header} is not HS256 for token {join.token_id}")
    signing_input = f"{header_b64}.{_b64url(content.encode())}".encode()
    expected = _b64url(hmac.new(join.token_secret.encode(), signing_input, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        raise JoinRefused(f"cluster-info at {join.endpoint} is not signed with token {join.token_id}'s secret: "
                          "the token is wrong or the endpoint is not the cluster that issued it")


def discover(join: JoinCommand, timeout: float = DISCOVERY_TIMEOUT) -> tuple[str, bytes]:
    """Token discovery: returns (server URL, CA PEM) once cluster-info is signed for our token and the CA matches
    the pin. Waits for the bootstrap signer (it signs a new token within a second or two)."""
    url = f"https://{join.endpoint}/api/v1/namespaces/kube-public/configmaps/cluster-info"
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # no CA yet: the JWS and the pin below are what we trust
    deadline = time.monotonic() + timeout
    problem = ""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5, context=insecure) as response:
                data = json.load(response).get("data") or {}
            signature = data.get(f"jws-kubeconfig-{join.token_id}")
            if signature:
                break
            problem = f"cluster-info has no signature for token {join.token_id} (unknown or expired token?)"
        except (OSError, ValueError) as exc:
            problem = f"cannot read cluster-info from {url}: {exc}"
        if time.monotonic() > deadline:
            raise JoinRefused(f"discovery failed after {timeout:.0f}s: {problem}")
        time.sleep(0.3)
    content = data.get("kubeconfig") or ""
    _verify_jws(signature, content, join)
    clusters = (yaml.safe_load(content) or {}).get("clusters") or []
    if len(clusters) != 1:
        raise JoinRefused(f"cluster-info kubeconfig holds {len(clusters)} clusters, not one")
    cluster = clusters[0]["cluster"]
    ca_pem = base64.b64decode(cluster["certificate-authority-data"])
    actual = ca_public_key_hash(ca_pem)
    if actual not in join.ca_hashes:
        raise JoinRefused(f"the cluster CA's public key hash is {actual}, not the pinned "
                          f"{', '.join(join.ca_hashes)}: refusing to join {join.endpoint}")
    return cluster["server"], ca_pem


# -- host sysctls the kubelet changes -------------------------------------------------------------

_running = 0
_ORIGINAL = "original.json"


@contextlib.contextmanager
def _records_locked() -> Iterator[None]:
    """The sysctl records are shared by every process that runs kubelets here (the lab's servers, tests)."""
    SYSCTL_RECORDS.mkdir(parents=True, exist_ok=True)
    with open(SYSCTL_RECORDS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _restore_sysctls(values: dict[str, str]) -> None:
    for key, value in values.items():
        try:
            Path("/proc/sys", key).write_text(value)
        except OSError as exc:
            log.warning("cannot restore sysctl %s=%s: %s", key, value, exc)


def _release_if_unheld() -> bool:
    """Under the lock: with no live holder left, put the host values back (recorded by the first holder)."""
    for holder in SYSCTL_RECORDS.glob("*.holder"):
        if not holder.stem.isdigit() or not Path(f"/proc/{holder.stem}").exists():
            holder.unlink(missing_ok=True)
    original = SYSCTL_RECORDS / _ORIGINAL
    if any(SYSCTL_RECORDS.glob("*.holder")) or not original.exists():
        return False
    with contextlib.suppress(OSError, ValueError):
        _restore_sysctls(json.loads(original.read_text()))
    original.unlink(missing_ok=True)
    return True


def _hold_sysctls() -> None:
    """The host values are recorded once per machine, by the first process to start a kubelet, and restored by the
    last one to stop (or by `reap_stale` after a killed run): per-process records would let a process that started
    while another's kubelet ran restore that kubelet's values."""
    global _running
    if _running == 0:
        with _records_locked():
            original = SYSCTL_RECORDS / _ORIGINAL
            if not original.exists():
                original.write_text(json.dumps({k: Path("/proc/sys", k).read_text().strip() for k in HOST_SYSCTLS}))
            (SYSCTL_RECORDS / f"{os.getpid()}.holder").touch()
    _running += 1


def _release_sysctls() -> None:
    global _running
    _running -= 1
    if _running == 0:
        with _records_locked():
            (SYSCTL_RECORDS / f"{os.getpid()}.holder").unlink(missing_ok=True)
            _release_if_unheld()


# -- cgroups -------------------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[Path]:
    return sorted(p for p in CGROUP_ROOT.iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name != "unified" and (p / "cgroup.procs").exists())


def _cgroup_pids(cgroup: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / cgroup.lstrip("/")
        for procs in top.rglob("cgroup.procs") if top.exists() else ():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroup(cgroup: str) -> None:
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / cgroup.lstrip("/")
        if not top.exists():
            continue
        for path in [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]:
            try:
                path.rmdir()
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", path, exc)


def reap_stale() -> list[str]:
    """Kill what nodes of a crashed (SIGKILLed) run left behind and remove their cgroups: kubelet and containerd
    die with their parent, containerd's shims and the containers they run do not. Found by their cgroup
    `/dpf-<pid>-<node>` whose pid is gone; the host sysctls such a run changed are restored from its record."""
    reaped = []
    for top in (CGROUP_ROOT / "pids").glob("dpf-*-*"):
        owner = top.name.split("-")[1]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        cgroup = f"/{top.name}"
        for _ in range(50):
            pids = _cgroup_pids(cgroup)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        _remove_cgroup(cgroup)
        reaped.append(cgroup)
    if reaped:  # its pods' netns files, whose mounts died with its mount namespace
        reaped.extend(_remove_unmounted_pod_netns())
    if SYSCTL_RECORDS.is_dir():
        with _records_locked():
            if _release_if_unheld():
                reaped.append("host sysctls")
    return reaped


def _pod_netns_mounts(mountinfo: str) -> set[Path]:
    """containerd's pod netns mounts (`/run/netns/cni-*`, nsfs) in one mount namespace's mountinfo."""
    found = set()
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        mount_point = Path(fields[0].split()[4])
        if len(fields) == 2 and fields[1].split()[0] == "nsfs" and mount_point.name.startswith("cni-") \
                and mount_point.parent in (NETNS_DIR, Path("/var/run/netns")):
            found.add(NETNS_DIR / mount_point.name)
    return found


def _remove_unmounted_pod_netns() -> list[str]:
    """Remove `/run/netns/cni-*` files no mount namespace of the machine mounts any more. Only after a crashed
    run was reaped: a live containerd creates the file a moment before it mounts the namespace there."""
    mounted: set[Path] = set()
    namespaces: set[str] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            namespace = os.readlink(proc / "ns" / "mnt")
            if namespace not in namespaces:
                namespaces.add(namespace)
                mounted |= _pod_netns_mounts((proc / "mountinfo").read_text())
        except OSError:
            continue  # gone meanwhile
    return _remove_netns_files(set(NETNS_DIR.glob("cni-*")) - mounted)


def _remove_netns_files(paths: set[Path]) -> list[str]:
    """Unlink the netns files among `paths` that are no mount point here (their namespace is gone)."""
    removed = []
    for path in paths:
        if not os.path.ismount(path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(str(path))
    return removed


# -- the node ----------------------------------------------------------------------------------------


class Kubelet:
    """containerd + kubelet for one DPU (`netns`), joined with `join_command` as Node `node_name`.

    `netns` must reach the apiserver in the command (e.g. attached to the DPU cluster's `NodeNetwork`). Call
    `start()` from the main thread: its children die with the thread that started them (see `process.py`)."""

    def __init__(self, netns: str, node_name: str, join_command: str, workdir: Path,
                 pod_subnet: str = "10.244.0.0/24", image_tar: Path | None = None,
                 multus_kubeconfig: Path | None = None, cni_plugins: dict[str, Path] | None = None,
                 cni_env: dict[str, str] | None = None) -> None:
        """With `multus_kubeconfig`, Multus (thin plugin) is the node's CNI: the pod network stays its cluster
        network (eth0) and a pod's `k8s.v1.cni.cncf.io/networks` annotation adds the NetworkAttachmentDefinitions
        it names, read with that kubeconfig (Multus' own credentials; a DaemonSet's ServiceAccount upstream).
        `cni_plugins` adds plugin binaries by type name (e.g. the SFC CNI) beside the standard ones; `cni_env` is
        set in containerd's environment, which libcni hands on to every CNI plugin it runs."""
        self.netns = netns
        self.node_name = node_name
        self.join = JoinCommand.parse(join_command)
        self.dir = workdir
        self.pod_subnet = pod_subnet
        self.image_tar = image_tar
        self.children: list[Child] = []
        self.cgroup = f"/dpf-{os.getpid()}-{node_name}"
        self.node_ip = ""
        self.server = ""
        self._holds_sysctls = False
        self.multus_kubeconfig = multus_kubeconfig
        self.cni_plugins = cni_plugins or {}
        self.cni_env = cni_env or {}

    @property
    def cni_bin_dir(self) -> Path:
        """The node's CNI plugin directory: the standard plugins, Multus and `cni_plugins`, as links."""
        return self.dir / "cni" / "bin"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def kubelet_log(self) -> Path:
        return self.dir / "kubelet.log"

    def start(self) -> Kubelet:
        self.server, ca_pem = discover(self.join)  # refuses before anything runs
        reap_stale()
        self.node_ip = self._source_address(self.join.endpoint.rsplit(":", 1)[0])
        try:
            self._write_files(ca_pem)
            self._make_cgroups()
            _hold_sysctls()
            self._holds_sysctls = True
            self._start_holder()
            self._start_containerd()
            self._start_kubelet()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for child in reversed(self.children[1:]):  # kubelet, containerd; the mount-namespace holder last
            child.stop()
        self._kill_leftovers()
        pod_netns = self._pod_netns()  # nothing creates pods any more; their mounts live on with the holder
        for child in self.children[:1]:
            child.stop()
        self.children.clear()
        _remove_netns_files(pod_netns)  # the mounts went with the namespace; the files stay in the host's /run/netns
        self._remove_cgroups()
        if self._holds_sysctls:
            self._holds_sysctls = False
            _release_sysctls()

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces --------------------------------------------------------------------------------------

    def _source_address(self, host: str) -> str:
        out = subprocess.run([tool("ip"), "-n", self.netns, "-j", "route", "get", host],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)[0]["prefsrc"]

    def _write_files(self, ca_pem: bytes) -> None:
        d = self.dir
        for sub in ("containerd/root", "containerd/state", "runc", "cni/conf", "cni/ipam", "cni/bin", "kubelet/root",
                    "kubelet/pki", "kubelet/var-lib-kubelet", "kubelet/pod-logs", "kubelet/containers", "opt"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "ca.crt").write_bytes(ca_pem)
        ca_data = base64.b64encode(ca_pem).decode()
        (d / "bootstrap-kubelet.conf").write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "bootstrap",
            "clusters": [{"name": "dpu", "cluster": {"server": self.server, "certificate-authority-data": ca_data}}],
            "users": [{"name": BOOTSTRAP_USER, "user": {"token": f"{self.join.token_id}.{self.join.token_secret}"}}],
            "contexts": [{"name": "bootstrap", "context": {"cluster": "dpu", "user": BOOTSTRAP_USER}}],
        }))
        (d / "resolv.conf").write_text("")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (d / "containerd" / "config.toml").write_text(f"""version = 2
root = "{d / 'containerd/root'}"
state = "{d / 'containerd/state'}"
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[{cri}]
  sandbox_image = "{BUSYBOX_IMAGE}"
  # This machine refuses negative oom_score_adj; without this runc fails with "can't get final child's PID".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [{cri}.containerd]
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d / 'runc'}"
        # Shims daemonize away from containerd: in the DPU's cgroup, stop() and reap_stale() find them there.
        ShimCgroup = "{self.cgroup}/shims"
  [{cri}.cni]
    bin_dir = "{self.cni_bin_dir}"
    conf_dir = "{d / 'cni/conf'}"
""")
        self._link_cni_plugins()
        pods = {"cniVersion": "0.4.0", "name": "pods", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True,
            "ipMasq": True,  # pods reach the apiserver through the DPU's own address
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.pod_subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(d / "cni/ipam")}}]}
        if self.multus_kubeconfig is None:
            (d / "cni" / "conf" / "10-pods.conflist").write_text(json.dumps(pods, indent=1))
        else:  # containerd takes the first file of conf_dir: Multus, delegating eth0 to the pod network
            (d / "cni" / "conf" / "00-multus.conf").write_text(json.dumps({
                "cniVersion": "0.4.0", "name": "multus-cni-network", "type": "multus",
                "kubeconfig": str(self.multus_kubeconfig), "cniDir": str(d / "cni/multus"),
                "binDir": str(self.cni_bin_dir), "logFile": str(d / "multus.log"), "logLevel": "verbose",
                "delegates": [pods]}, indent=1))
        (d / "kubelet" / "config.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.node_ip, "readOnlyPort": 0, "failSwapOn": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(d / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "rotateCertificates": True, "serverTLSBootstrap": True,
            "podLogsDir": str(d / "kubelet/pod-logs"), "resolvConf": str(d / "resolv.conf"),
            # A shared test machine's disk and memory are not this node's to judge: no eviction pressure.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        }))

    def _link_cni_plugins(self) -> None:
        plugins = {p.name: p for p in Path("/usr/lib/cni").iterdir()}
        if self.multus_kubeconfig is not None:
            plugins["multus"] = Path(tool("multus"))
        plugins.update(self.cni_plugins)
        for name, target in plugins.items():
            link = self.cni_bin_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)

    def _make_cgroups(self) -> None:
        # The kubelet requires its cgroup root in every v1 hierarchy; cpuset children start empty, so copy.
        for hierarchy in cgroup_hierarchies():
            parent = hierarchy
            for path in (hierarchy / self.cgroup.lstrip("/"), hierarchy / self.cgroup.lstrip("/") / "shims"):
                path.mkdir(exist_ok=True)
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if (path / name).exists():
                        (path / name).write_text((parent / name).read_text())
                parent = path

    def _remove_cgroups(self) -> None:
        _remove_cgroup(self.cgroup)

    def _pod_netns(self) -> set[Path]:
        """The pods' network namespaces containerd pinned (`/run/netns/cni-*`, bind mounts of nsfs made in this
        node's private mount namespace: only their mount points are visible on the host)."""
        if not self.children:
            return set()
        try:
            return _pod_netns_mounts(Path(f"/proc/{self.children[0].pid}/mountinfo").read_text())
        except OSError:
            return set()

    def cgroup_pids(self) -> set[int]:
        return _cgroup_pids(self.cgroup)

    def _shim_pids(self) -> set[int]:
        """containerd shims of this DPU's containerd (they daemonize away from it; found by its socket)."""
        needle = str(self.containerd_socket).encode()
        found = set()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if needle in cmdline.read_bytes():
                    found.add(int(cmdline.parent.name))
            except OSError:
                continue
        return found - {c.pid for c in self.children}

    def _kill_leftovers(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.cgroup_pids() | self._shim_pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        log.warning("%s: processes survived SIGKILL: %s", self.node_name, self.cgroup_pids() | self._shim_pids())

    def _start_holder(self) -> Child:
        mounts = " && ".join(
            f"mkdir -p {target} && mount --bind {self.dir / 'kubelet' / source} {target}"
            for target, source in zip(PRIVATE_DIRS, ("var-lib-kubelet", "containers"), strict=True))
        holder = Child(f"mount namespace ({self.node_name})", [
            tool("nsenter"), f"--net=/run/netns/{self.netns}", tool("unshare"), "--mount", "--propagation", "slave",
            "sh", "-c", f"{mounts} && exec sleep infinity",
        ], self.dir / "holder.log")
        self.children.append(holder)

        def ready() -> bool:
            return Path(f"/proc/{holder.pid}/comm").read_text().strip() == "sleep"
        wait_until(ready, 10, f"{self.node_name}'s mount namespace", while_alive=[holder])
        return holder

    def enter_argv(self) -> list[str]:
        """The prefix that runs a command in this node's network and mount namespaces, where the DPU's other
        software belongs (on a DPU the agent and the kubelet share the OS's mount namespace: a pod's netns
        `/run/netns/cni-*` is a mount made in it, only an empty file outside)."""
        if not self.children:
            raise RuntimeError(f"{self.node_name}: not started")
        return [tool("nsenter"), f"--target={self.children[0].pid}", "--mount", "--net"]

    def _start_containerd(self) -> None:
        containerd = Child(f"containerd ({self.node_name})", [
            *self.enter_argv(), tool("containerd"), "--config", str(self.dir / "containerd" / "config.toml"),
        ], self.dir / "containerd.log", env={**os.environ, **self.cni_env} if self.cni_env else None)
        self.children.append(containerd)
        wait_until(self.containerd_socket.exists, 20, f"{self.node_name}'s containerd socket",
                   while_alive=[containerd])
        image = self.image_tar or build_busybox_image(self.dir / "image")
        import_image(self.containerd_socket, image)

    def _start_kubelet(self) -> None:
        d = self.dir
        self.children.append(Child(f"kubelet ({self.node_name})", [
            *self.enter_argv(), tool("kubelet"),
            f"--config={d / 'kubelet/config.yaml'}",
            f"--bootstrap-kubeconfig={d / 'bootstrap-kubelet.conf'}", f"--kubeconfig={d / 'kubelet.conf'}",
            f"--cert-dir={d / 'kubelet/pki'}", f"--root-dir={d / 'kubelet/root'}",
            f"--hostname-override={self.node_name}", f"--node-ip={self.node_ip}", "--v=1",
        ], self.kubelet_log))
