"""Parsing of ``host:port`` targets (IPv4, ``[IPv6]:port`` and host names)."""

from __future__ import annotations

import ipaddress

__all__ = ["format_target", "parse_target"]


def parse_target(target: str) -> tuple[str, int]:
    """Split ``target`` into host and port, with a clear error for bad input.

    >>> parse_target("[::1]:4433")
    ('::1', 4433)
    """
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be a 'host:port' string, not {target!r}")
    scheme, sep, rest = target.partition("://")
    if sep or target.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        bare = rest.lstrip("/") if sep else target.partition(":")[2].lstrip("/")
        example = bare if bare else "localhost:4433"
        raise ValueError(
            f"target {target!r}: brpc targets are plain 'host:port' (no scheme such as "
            f"'{scheme if sep else target.partition(':')[0]}:'), for example {example!r}"
        )
    if target.startswith("["):
        end = target.find("]")
        if end == -1 or not target[end + 1 :].startswith(":"):
            raise ValueError(f"target {target!r}: an IPv6 target looks like '[::1]:4433'")
        host, port_text = target[1:end], target[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"target {target!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = target.rpartition(":")
        if not sep or not host:
            raise ValueError(f"target {target!r} needs a port, for example 'localhost:4433'")
        if ":" in host:
            raise ValueError(
                f"target {target!r}: put IPv6 addresses in brackets, for example '[::1]:4433'"
            )
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {target!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def format_target(host: str, port: int) -> str:
    """The inverse of :func:`parse_target`."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
