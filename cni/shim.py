"""The CNI plugin binary: parse just enough, forward to the DPU agent, print what it answers.

Kubelet (through Multus) runs this for every attachment. It answers VERSION itself and forwards
everything else (the CNI_* variables and the raw stdin config) over the agent's root-only unix
socket under one overall deadline. If the agent does not acknowledge within `wire.ACK_TIMEOUT` the
call fails with code 11 (try again later), so kubelet is never held for minutes.

DEL when the agent is *unreachable* (no socket, connection refused) succeeds: kubelet would
otherwise retry forever and the pod would hang in Terminating for as long as the agent is down.
Nothing leaks: once the runtime removes the netns the veth pair is gone, and the agent's start-up
resync releases the IP and the OVS port of every attachment whose veth or netns has disappeared.
DEL when the agent accepted the request but died or stalled mid-way returns 11, since the request
may be half done; the retry is idempotent.

Start-up time is the whole cost of this process (it runs cold for every pod, and 20 at once on a
2-core DPU), so it imports only C modules: `_socket` instead of `socket` (whose enum/selectors cost
~5 ms), and `_json`'s C scanner and string encoder instead of `json` (which compiles regexes).
The agent sends the result already serialized; it is printed verbatim. Standard library only.
"""

from __future__ import annotations

import _json
import _socket
import os
import sys
import time

from dpf.cni import wire

_quote = _json.encode_basestring_ascii


class _Ctx:
    """What `_json.make_scanner` reads from a JSONDecoder, without importing json (and re)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


# A class with the decoder's attributes stands in for a JSONDecoder: importing json costs start-up time.
_scan = _json.make_scanner(_Ctx)  # type: ignore[arg-type]


def loads(text: str) -> object:
    """json.loads for one document; ValueError when it is not exactly one JSON value."""
    body = text.strip()
    try:
        value, end = _scan(body, 0)
    except StopIteration as exc:
        raise ValueError("not JSON") from exc
    if end != len(body):
        raise ValueError("trailing data")
    return value


def _doc(fields: dict) -> str:
    parts = []
    for key, value in fields.items():
        rendered = value if isinstance(value, int) and not isinstance(value, bool) else _quote(str(value))
        parts.append(f"{_quote(key)}: {rendered}")
    return "{" + ", ".join(parts) + "}"


class _Failure(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class _Unreachable(_Failure):
    """Nothing listens on the socket: the agent is not running."""


def _socket_path(conf: dict, env: dict[str, str]) -> str:
    path = conf.get("agentSocket") or env.get(wire.SOCKET_ENV) or wire.DEFAULT_SOCKET
    if not isinstance(path, str) or not path.startswith("/"):
        raise _Failure(wire.INVALID_NETWORK_CONFIG, f"agentSocket {path!r} must be an absolute path",
                       "field agentSocket")
    return path


def _read_line(sock: _socket.socket, buf: bytearray, deadline: float, what: str) -> dict:
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(what)
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(f"agent closed the connection before {what}")
        buf += chunk
        if len(buf) > wire.MAX_LINE:
            raise _Failure(wire.INTERNAL, "agent answer too long")
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    answer = loads(line.decode())
    if not isinstance(answer, dict):
        raise ValueError("agent answer is not an object")
    return answer


def request_line(command: str, env: dict[str, str], raw: str, plugin: str) -> bytes:
    fwd = ",".join(f"{_quote(k)}:{_quote(env[k])}" for k in wire.FORWARDED_ENV if k in env)
    return (f'{{"v":{wire.PROTOCOL},"command":{_quote(command)},"env":{{{fwd}}},'
            f'"config":{_quote(raw)},"plugin":{_quote(plugin)}}}\n').encode()


def forward(path: str, payload: bytes, started: float) -> dict:
    """Send one request; return the agent's answer line. Raises _Failure/_Unreachable."""
    ack_deadline = started + wire.ACK_TIMEOUT
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(max(ack_deadline - time.monotonic(), 0.01))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise _Unreachable(wire.TRY_AGAIN_LATER, f"DPU agent is not running (no listener on {path})",
                               type(exc).__name__) from exc
        buf = bytearray()
        try:
            sock.sendall(payload)
            first = _read_line(sock, buf, ack_deadline, "acknowledging the request")
            if first.get("ack") is not True:
                return first  # answered at once (e.g. busy, or an unreadable request)
            return _read_line(sock, buf, started + wire.TOTAL_TIMEOUT, "answering")
        except TimeoutError as exc:
            raise _Failure(wire.TRY_AGAIN_LATER, f"DPU agent did not finish {exc} in time; try again later",
                           path) from exc
        except (OSError, ValueError) as exc:
            raise _Failure(wire.TRY_AGAIN_LATER, f"lost the DPU agent mid-request: {exc}", path) from exc
    finally:
        sock.close()


def run(env: dict[str, str], raw: str, plugin: str) -> tuple[int, str, str]:
    """(exit code, stdout text, note for stderr). Pure apart from the socket."""
    started = time.monotonic()
    command = env.get("CNI_COMMAND", "")
    try:
        conf = loads(raw) if raw.strip() else {}
    except ValueError:
        conf = None
    version = conf.get("cniVersion") if isinstance(conf, dict) else None
    out_version = version if version in wire.SUPPORTED_VERSIONS else wire.CURRENT_VERSION

    def fail(code: int, msg: str, details: str = "") -> tuple[int, str, str]:
        return 1, _doc({"cniVersion": out_version, "code": code, "msg": msg, "details": details}), ""

    if command == "VERSION":
        supported = ", ".join(_quote(v) for v in wire.SUPPORTED_VERSIONS)
        return 0, f'{{"cniVersion": {_quote(wire.CURRENT_VERSION)}, "supportedVersions": [{supported}]}}', ""
    if command not in wire.COMMANDS:
        return fail(wire.INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of {', '.join(wire.COMMANDS)}")
    if not isinstance(conf, dict) or not conf:
        return fail(wire.DECODE_FAILURE, "the network configuration on stdin is not a JSON object")
    if version not in wire.SUPPORTED_VERSIONS:
        return fail(wire.INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported; use one of "
                    f"{', '.join(wire.SUPPORTED_VERSIONS)}", "field cniVersion")
    try:
        answer = forward(_socket_path(conf, env), request_line(command, env, raw, plugin), started)
    except _Unreachable as exc:
        if command == "DEL":
            return 0, "", f"dpf-sfc-cni: {exc.msg}; DEL succeeds, the agent reclaims on start-up"
        if command == "STATUS":
            return fail(wire.PLUGIN_NOT_AVAILABLE, exc.msg, exc.details)
        return fail(exc.code, exc.msg, exc.details)
    except _Failure as exc:
        return fail(exc.code, exc.msg, exc.details)
    code = answer.get("code", wire.INTERNAL)
    if code == 0:
        return 0, str(answer.get("stdout") or ""), ""
    return fail(int(code), str(answer.get("msg", "agent error")), str(answer.get("details", "")))


def main() -> int:
    raw = sys.stdin.read()
    rc, out, note = run(dict(os.environ), raw, os.path.basename(sys.argv[0]))
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    if note:
        sys.stderr.write(note + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
