"""Receiving with UDP GRO: splitting what ``recvmsg`` returns (pure)."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from brpc._session.quic import udp


def gro_cmsg(size: int) -> list[tuple[int, int, bytes]]:
    """The control message Linux attaches to a coalesced buffer."""
    return [(udp.SOL_UDP, udp.UDP_GRO, struct.pack("=i", size))]


# -- the pure splitter -----------------------------------------------------------------


def test_a_buffer_without_segment_size_is_one_datagram() -> None:
    assert udp.gro_datagrams(b"abcde", []) == [b"abcde"]
    assert udp.gro_datagrams(b"", []) == [b""]
    other = [(socket.IPPROTO_IP, 8, b"\x01\x00\x00\x00")]  # not UDP_GRO: ignored
    assert udp.gro_datagrams(b"abcde", other) == [b"abcde"]


def test_a_coalesced_buffer_splits_by_segment_size_the_last_shorter() -> None:
    assert udp.gro_datagrams(b"aabbc", gro_cmsg(2)) == [b"aa", b"bb", b"c"]
    assert udp.gro_datagrams(b"aabbcc", gro_cmsg(2)) == [b"aa", b"bb", b"cc"]
    assert udp.gro_datagrams(b"aab", gro_cmsg(3)) == [b"aab"]
    assert udp.gro_datagrams(b"aa", gro_cmsg(5)) == [b"aa"]  # one datagram, shorter


def test_a_nonsense_segment_size_leaves_the_buffer_whole() -> None:
    assert udp.gro_datagrams(b"abc", gro_cmsg(0)) == [b"abc"]
    assert udp.gro_datagrams(b"abc", gro_cmsg(-4)) == [b"abc"]
    assert udp.gro_datagrams(b"abc", [(udp.SOL_UDP, udp.UDP_GRO, b"\x01")]) == [b"abc"]


def test_a_truncated_buffer_loses_its_incomplete_last_datagram() -> None:
    assert udp.gro_datagrams(b"aabbc", gro_cmsg(2), socket.MSG_TRUNC) == [b"aa", b"bb"]
    assert udp.gro_datagrams(b"abc", [], socket.MSG_TRUNC) == []


@given(
    sizes=st.integers(min_value=1, max_value=3000),
    count=st.integers(min_value=1, max_value=64),
    last=st.integers(min_value=1, max_value=3000),
)
def test_splitting_gives_back_what_gso_sent(sizes: int, count: int, last: int) -> None:
    last = min(last, sizes)
    sent = [bytes([i % 256]) * sizes for i in range(count - 1)] + [b"\xff" * last]
    assert udp.gro_datagrams(b"".join(sent), gro_cmsg(sizes)) == sent


def test_the_kernel_refusing_gro_is_reported_not_raised() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        assert not udp.enable_gro(tcp)  # not a UDP socket: ENOPROTOOPT
