"""One rtnetlink socket kept open for the host agent's few link requests (OOB bridge check, VF0 into the bridge).

Why not a pyroute2 `IPRoute` per call, as before: each one built an asyncio event loop of its own and a fresh
socket for two or three requests, re-done for every DPU every few seconds (at 50 DPUs per host that was most of
the agent's CPU). pyroute2 0.9's sync `IPRoute` cannot simply be kept either: its socket and event loop are
per thread, and the agent's netlink calls run on whichever pool thread `asyncio.to_thread` picks. Here a plain
`AF_NETLINK` socket does the request/response and pyroute2's message classes only encode and decode.

Network namespaces: a netlink socket works in the namespace it was opened in, and the calling thread's namespace
is the one meant (the agent runs in the host's namespace; the provisioning bench and the tests enter an emulated
host's namespace with `setns` for the call). So one socket is kept per namespace the caller has been in, keyed
by the namespace's inode, opened on first use. A socket that fails (a timeout, a receive buffer overrun, the
namespace gone) is closed and the next request opens a new one. Requests are serialised by a lock: they are
sub-millisecond, and several DPU workers share the object.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import weakref
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

THREAD_NETNS = "/proc/thread-self/ns/net"
TIMEOUT_SECONDS = 5.0
"""Longest wait for the kernel's answer; rtnetlink answers at once, so hitting it means a broken socket."""
_RECV_BYTES = 1 << 16  # above the kernel's largest dump chunk (32 KiB): nothing is truncated
IFF_UP = 0x1


class Rtnl:
    """Link and address requests over kept-open rtnetlink sockets, one per network namespace used."""

    def __init__(self, timeout: float = TIMEOUT_SECONDS) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sockets: dict[int, socket.socket] = {}
        self._marshal = MarshalRtnl()
        self._seq = 0
        # Closed when this object goes even without close(): a kept socket would keep its namespace alive.
        self._finalizer = weakref.finalize(self, _close_all, self._sockets)

    def close(self) -> None:
        with self._lock:
            self._finalizer()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------------------------

    def link(self, name: str) -> Any | None:
        """The link `name` (an RTM_NEWLINK message), None when there is none: one request, not a dump."""
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            return self._request(msg, RTM_GETLINK, NLM_F_REQUEST)[0]
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise

    def ipv4_addresses(self, index: int) -> list[Any]:
        """The IPv4 addresses (RTM_NEWADDR messages) of the link with `index`."""
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        return [a for a in self._request(msg, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP) if a["index"] == index]

    def set_link(self, index: int, *, mtu: int | None = None, master: int | None = None, up: bool = False) -> None:
        """`ip link set`: the given attributes of link `index`, acknowledged by the kernel (NetlinkError if not)."""
        msg = ifinfmsg()
        msg["index"] = index
        attrs: list[tuple[str, int]] = []
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        msg["attrs"] = attrs
        if up:
            msg["flags"] = msg["change"] = IFF_UP
        self._request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)

    # --- the socket ----------------------------------------------------------------------------------------

    def _request(self, msg: Any, msg_type: int, flags: int) -> list[Any]:
        with self._lock:
            if not self._finalizer.alive:
                raise OSError(errno.EBADF, "rtnetlink: closed")
            netns = os.stat(THREAD_NETNS).st_ino
            sock = self._sockets.get(netns) or self._open(netns)
            self._seq = self._seq % 0xFFFFFFFF + 1
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg["header"]["sequence_number"] = self._seq
            msg.encode()
            try:
                sock.send(msg.data)
                return self._replies(sock, self._seq, dump=bool(flags & NLM_F_DUMP))
            except OSError:
                self._sockets.pop(netns, None)
                sock.close()  # the next request opens a fresh one
                raise

    def _open(self, netns: int) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.bind((0, 0))  # no multicast groups: only answers to our requests arrive
            sock.settimeout(self._timeout)
        except OSError:
            sock.close()
            raise
        self._sockets[netns] = sock
        return sock

    def _replies(self, sock: socket.socket, seq: int, dump: bool) -> list[Any]:
        found: list[Any] = []
        while True:
            data = sock.recv(_RECV_BYTES)
            for reply in self._marshal.parse(data):
                header = reply["header"]
                if header["sequence_number"] != seq:
                    continue  # the rest of an earlier request's answer, cut short by an error
                error = header.get("error")
                if error is not None:
                    raise error
                if header["type"] in (NLMSG_DONE, NLMSG_ERROR):  # end of a dump / an ack
                    return found
                found.append(reply)
                if not dump:
                    return found


def _close_all(sockets: dict[int, socket.socket]) -> None:
    for sock in sockets.values():
        sock.close()
    sockets.clear()
