"""Batched UDP I/O for QUIC datagrams: Linux GSO and GRO, with plain fallbacks.

Sending: a run of equal-size datagrams (the last may be shorter) to one address
goes out in one ``sendmsg`` carrying a ``(SOL_UDP, UDP_SEGMENT)`` control
message; the kernel (or the NIC) cuts it into datagrams. Receiving: with
``UDP_GRO`` on, one ``recvmsg`` can return several datagrams from one sender
coalesced, with their size in a ``UDP_GRO`` control message.

Support is detected at run time, per socket: other platforms, kernels without
the options, and sockets whose device refuses segmentation (``EIO`` when
checksum offload is off) fall back to one ``sendto``/``recvfrom`` per datagram,
and a refusal is remembered so it is paid once. The grouping and splitting are
pure functions (:func:`gso_runs`, :func:`gro_datagrams`); :class:`UdpBatching`
holds the per-socket decision. A session's own GRO reader is in ``batching.py``.

Also here: :func:`connected_sendto`, which makes aioquic's
``transport.sendto(data, addr)`` work on connected sockets under uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GRO_BUFFER",
    "GRO_CMSG_SPACE",
    "GSO_MAX_BYTES",
    "GSO_MAX_SEGMENTS",
    "SOL_UDP",
    "UDP_GRO",
    "UDP_SEGMENT",
    "UdpBatching",
    "connected_sendto",
    "enable_gro",
    "forbid_fragmentation",
    "gro_datagrams",
    "gro_segment_size",
    "gso_runs",
    "route_mtu",
    "route_mtu_to",
    "split_gro_buffer",
]

logger = logging.getLogger(__name__)

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_GRO = 104  # linux/udp.h
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel
GSO_MAX_BYTES = 65_000  # one IP packet: 65,535 minus IPv6 and UDP headers, rounded down
#: What ``recvmsg`` reads into: a coalesced buffer is at most one IP packet.
GRO_BUFFER = 65_535
_IS_LINUX = sys.platform.startswith("linux")
#: Control message space for the ``UDP_GRO`` segment size (an ``int``).
GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_GSO_REFUSED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT)

Address = Any  # what socket.sendto takes: (host, port) or (host, port, flow, scope)


# -- pure functions --------------------------------------------------------------


def gso_runs(
    datagrams: Sequence[bytes],
    *,
    max_segments: int = GSO_MAX_SEGMENTS,
    max_bytes: int = GSO_MAX_BYTES,
) -> Iterator[tuple[int, list[bytes]]]:
    """Split ``datagrams`` (in order) into runs one GSO send can carry.

    Yields ``(segment_size, run)``: every datagram of a run is ``segment_size``
    bytes except possibly the last, which is shorter and ends the run; a run has
    at most ``max_segments`` datagrams and ``max_bytes`` bytes. A run of one is
    sent without GSO.
    """
    run: list[bytes] = []
    size = 0
    total = 0
    for datagram in datagrams:
        length = len(datagram)
        if run and (
            length > size
            or len(run) >= max_segments
            or total + length > max_bytes
            or len(run[-1]) < size
        ):
            yield size, run
            run = []
        if not run:
            size = length
            total = 0
        run.append(datagram)
        total += length
    if run:
        yield size, run


def split_gro_buffer(buffer: bytes, segment_size: int | None) -> list[bytes]:
    """The datagrams in a buffer ``recvmsg`` returned: ``segment_size``-byte pieces,
    the last possibly shorter. Without a segment size the buffer is one datagram."""
    if segment_size is None or segment_size <= 0 or segment_size >= len(buffer):
        return [buffer]
    view = memoryview(buffer)
    return [bytes(view[i : i + segment_size]) for i in range(0, len(buffer), segment_size)]


def gro_segment_size(ancdata: Sequence[tuple[int, int, bytes]]) -> int | None:
    """The segment size in ``recvmsg``'s control messages, None if it sent none."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            size: int = struct.unpack("=i", data[:4])[0]
            return size
    return None


#: As a plain int: ``socket.MSG_TRUNC`` is an IntFlag, and ``int & IntFlag`` runs
#: the enum's Python code, once per ``recvmsg``.
_MSG_TRUNC = int(socket.MSG_TRUNC)


def gro_datagrams(
    data: bytes, ancdata: Sequence[tuple[int, int, bytes]], flags: int = 0
) -> list[bytes]:
    """The datagrams in what one ``recvmsg`` returned: ``data``, its control
    messages and flags. With a ``UDP_GRO`` segment size they are pieces of that
    size, the last possibly shorter; without, ``data`` is one datagram. A buffer
    the kernel cut short (``MSG_TRUNC``) loses its incomplete last datagram."""
    datagrams = split_gro_buffer(data, gro_segment_size(ancdata))
    if flags & _MSG_TRUNC:
        datagrams.pop()
    return datagrams


def _segment_cmsg(size: int) -> list[tuple[int, int, bytes]]:
    return [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]


# -- per-socket I/O --------------------------------------------------------------


@dataclass
class UdpBatching:
    """Batched send and receive on one UDP socket, falling back where refused.

    ``gso`` and ``gro`` start as what the platform offers (or what the caller
    forces, e.g. ``gso=False`` to test the fallback) and turn off for good the
    first time the kernel refuses them. ``max_segments`` is the kernel's limit
    per GSO send. ``syscalls`` counts the send and receive system calls made.
    """

    sock: socket.socket
    gso: bool = _IS_LINUX
    gro: bool = _IS_LINUX
    max_segments: int = GSO_MAX_SEGMENTS
    syscalls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.gso:
            self.gso = _has_option(self.sock, UDP_SEGMENT)
        if self.gro:
            self.gro = enable_gro(self.sock)

    def send(self, datagrams: Sequence[bytes], addr: Address | None = None) -> int:
        """Send ``datagrams`` to ``addr`` (None on a connected socket), in order.

        Returns the number of system calls it took. Errors other than a GSO
        refusal (e.g. ``BlockingIOError``) propagate; datagrams before the
        failing call have been sent.
        """
        calls = 0
        for size, run in gso_runs(datagrams, max_segments=self.max_segments):
            if len(run) > 1 and self.gso:
                try:
                    self._sendmsg(run, _segment_cmsg(size), addr)
                    calls += 1
                    continue
                except OSError as exc:
                    if exc.errno not in _GSO_REFUSED:
                        raise
                    logger.info("UDP GSO refused (%s); sending datagrams one by one", exc)
                    self.gso = False
            for datagram in run:
                self._sendto(datagram, addr)
                calls += 1
        return calls

    def receive(self) -> tuple[list[bytes], Address]:
        """Receive what one system call returns: one datagram, or with GRO several
        from the same sender. Raises ``BlockingIOError`` on a non-blocking socket
        with nothing to read."""
        data, segment_size, addr = self.receive_buffer()
        return split_gro_buffer(data, segment_size), addr

    def receive_buffer(self) -> tuple[bytes, int | None, Address]:
        """Like :meth:`receive`, without splitting: the buffer, its segment size
        (None for a single datagram) and the sender. For engines that take the
        coalesced buffer whole (qh3's ``QuicConnection.receive_gro_buffer``)."""
        self.syscalls += 1
        if self.gro:
            data, ancdata, _flags, addr = self.sock.recvmsg(GRO_BUFFER, GRO_CMSG_SPACE)
            return data, gro_segment_size(ancdata), addr
        data, addr = self.sock.recvfrom(GRO_BUFFER)
        return data, None, addr

    def _sendmsg(
        self, run: list[bytes], ancdata: list[tuple[int, int, bytes]], addr: Address | None
    ) -> None:
        self.syscalls += 1
        if addr is None:
            self.sock.sendmsg(run, ancdata)
        else:
            self.sock.sendmsg(run, ancdata, 0, addr)

    def _sendto(self, datagram: bytes, addr: Address | None) -> None:
        self.syscalls += 1
        if addr is None:
            self.sock.send(datagram)
        else:
            self.sock.sendto(datagram, addr)


def enable_gro(sock: socket.socket) -> bool:
    """Turn ``UDP_GRO`` on for ``sock`` (Linux); whether the kernel took it.

    From then on one ``recvmsg`` may return several datagrams coalesced, which
    only a reader that asks for the segment size (:func:`gro_datagrams`) can
    split: a plain ``recvfrom`` reader would see them as one."""
    if not _IS_LINUX:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        logger.info("UDP GRO refused (%s); receiving datagrams one by one", exc)
        return False
    return True


def _has_option(sock: socket.socket, option: int) -> bool:
    try:
        sock.getsockopt(SOL_UDP, option)
    except OSError:
        return False
    return True


# -- uvloop ------------------------------------------------------------------------


class _ConnectedSendto:
    """A datagram transport whose ``sendto(data, addr)`` drops ``addr``.

    Everything else is forwarded to the wrapped transport.
    """

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self._transport = transport

    def sendto(self, data: bytes, addr: Address | None = None) -> None:
        self._transport.sendto(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def connected_sendto(transport: asyncio.DatagramTransport) -> asyncio.DatagramTransport:
    """``transport``, made to accept ``sendto(data, addr)`` when it is connected.

    aioquic's ``QuicConnectionProtocol.transmit`` always calls
    ``transport.sendto(data, addr)``. asyncio's own loop accepts that on a
    connected socket when ``addr`` is the peer; uvloop raises instead (the
    kernel's EISCONN). Wrapping the transport in the protocol's
    ``connection_made`` lets the dialing side run on both loops. An unconnected
    transport is returned as is.
    """
    if transport.get_extra_info("peername") is None:
        return transport
    wrapper: asyncio.DatagramTransport = _ConnectedSendto(transport)  # type: ignore[assignment]
    return wrapper


# -- path MTU ------------------------------------------------------------------------

_IP_MTU_DISCOVER = 10  # linux/in.h
_IP_MTU = 14  # linux/in.h: the route MTU of a connected socket (IPv6 sockets too)
_IPV6_MTU_DISCOVER = 23  # linux/in6.h
_PMTUDISC_PROBE = 3  # set DF, never fragment, ignore the cached path MTU


def forbid_fragmentation(sock: Any) -> None:
    """Make the kernel send datagrams unfragmented with DF set (Linux), so that a
    path MTU probe bigger than the path is lost instead of fragmented.
    Elsewhere, or if refused, nothing changes."""
    if not _IS_LINUX:
        return
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_PROBE)
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_PROBE)
    except (OSError, AttributeError):
        logger.debug("could not set DF on the UDP socket", exc_info=True)


def route_mtu(sock: socket.socket) -> int | None:
    """The MTU of the kernel's route for a connected socket (Linux), else None."""
    try:
        return int(sock.getsockopt(socket.IPPROTO_IP, _IP_MTU))
    except (OSError, AttributeError):
        return None


def route_mtu_to(family: int, address: Address) -> int | None:
    """The MTU of the kernel's route to ``address``, asked through a short-lived
    connected UDP socket (connecting sends nothing), for a shared server socket
    that has no route of its own. None if the kernel does not say."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return route_mtu(probe)
    except OSError:
        return None
