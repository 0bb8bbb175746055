"""Target selection: which connected client(s) a call through the gateway goes to.

One small module, shared by everything that routes calls to clients: a
:class:`Target` says what was asked for (a client's name, a connection ID,
labels, or anyone serving the method's service); :func:`parse_labels` and
:func:`parse_selector` read the text forms (``role=web,zone=eu``, ``*``);
:func:`select` and :func:`pick` find the clients in a server's table. Pure
functions on :class:`brpc.Clients`; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..peer import ClientInfo
from ..registry import Clients

__all__ = [
    "SelectorError",
    "Target",
    "describe_labels",
    "parse_labels",
    "parse_selector",
    "pick",
    "select",
    "split_route",
]

#: Label keys and values as the gateway accepts them in text selectors.
_LABEL_PART = re.compile(r"[A-Za-z0-9_.\-:@]+")


class SelectorError(ValueError):
    """A selector's text could not be read; the message says what is wrong."""


@dataclass(frozen=True)
class Target:
    """What a call asked for; empty means "any client serving the service"."""

    name: str | None = None
    connection_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def describe(self, service: str | None = None) -> str:
        """The selector in words, for error messages."""
        parts = []
        if self.name is not None:
            parts.append(f"name {self.name!r}")
        if self.connection_id is not None:
            parts.append(f"connection id {self.connection_id!r}")
        if self.labels:
            parts.append(f"labels {describe_labels(self.labels)}")
        if not parts:
            parts.append("any client")
        text = " and ".join(parts)
        if service is not None and self.name is None and self.connection_id is None:
            text += f" serving {service}"
        return text

    @property
    def explicit(self) -> bool:
        """Names one client (by name or connection ID) rather than a group."""
        return self.name is not None or self.connection_id is not None

    def merged(self, other: Target) -> Target:
        """Both targets' constraints; conflicting values are an error."""
        for attribute in ("name", "connection_id"):
            mine, theirs = getattr(self, attribute), getattr(other, attribute)
            if mine is not None and theirs is not None and mine != theirs:
                raise SelectorError(
                    f"conflicting {attribute.replace('_', ' ')}s {mine!r} and {theirs!r}"
                )
        labels = dict(self.labels)
        for key, value in other.labels.items():
            if labels.get(key, value) != value:
                raise SelectorError(f"conflicting values for label {key!r}")
            labels[key] = value
        return Target(
            name=self.name if self.name is not None else other.name,
            connection_id=(
                self.connection_id if self.connection_id is not None else other.connection_id
            ),
            labels=labels,
        )


def describe_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def parse_labels(text: str) -> dict[str, str]:
    """``"role=web,zone=eu"`` as a dict; ``""`` and ``"*"`` are no labels."""
    text = text.strip()
    if text in ("", "*"):
        return {}
    labels: dict[str, str] = {}
    for term in text.split(","):
        key, sep, value = term.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SelectorError(f"label selector term {term!r} is not key=value (in {text!r})")
        for part in (key, value):
            if not _LABEL_PART.fullmatch(part):
                raise SelectorError(
                    f"label selector term {term!r} has characters other than letters, "
                    "digits and _.-:@"
                )
        if labels.get(key, value) != value:
            raise SelectorError(f"label {key!r} is given twice with different values")
        labels[key] = value
    return labels


def parse_selector(text: str) -> Target:
    """A fan-out or ``Brpc-Select`` selector: ``*`` (everyone), ``k=v,...`` (labels),
    ``name:NAME`` or ``id:CONNECTION_ID``."""
    text = text.strip()
    if text.startswith("name:"):
        name = text.removeprefix("name:")
        if not name:
            raise SelectorError("selector 'name:' needs a client name")
        return Target(name=name)
    if text.startswith("id:"):
        connection_id = text.removeprefix("id:")
        if not connection_id:
            raise SelectorError("selector 'id:' needs a connection id")
        return Target(connection_id=connection_id)
    return Target(labels=parse_labels(text))


def split_route(path: str) -> tuple[Target, str]:
    """``/c/{name}/pkg.Svc/M``, ``/id/{id}/...``, ``/l/{k=v,...}/...`` or ``/pkg.Svc/M``:
    the target the path prefix names and the method path ``/pkg.Svc/M``."""
    parts = path.split("/")
    if len(parts) >= 5 and parts[0] == "" and parts[1] in ("c", "id", "l"):
        kind, value, rest = parts[1], parts[2], "/" + "/".join(parts[3:])
        if not value:
            raise SelectorError(f"path prefix /{kind}/ needs a value")
        if kind == "c":
            return Target(name=value), rest
        if kind == "id":
            return Target(connection_id=value), rest
        return Target(labels=parse_labels(value)), rest
    return Target(), path


def select(clients: Clients[Any], target: Target, service: str | None) -> list[ClientInfo[Any]]:
    """Every connected client ``target`` picks, in connection order.

    A client named by name or connection ID is taken whatever it serves (it
    answers UNIMPLEMENTED itself); groups only take clients serving ``service``.
    """
    if target.connection_id is not None:
        info = clients.get(target.connection_id)
        if info is None:
            return []
        if target.name is not None and info.name != target.name:
            return []
        if any(info.labels.get(key) != value for key, value in target.labels.items()):
            return []
        return [info]
    if target.name is not None:
        return clients.find(name=target.name, labels=dict(target.labels) or None)
    return clients.find(labels=dict(target.labels) or None, service=service)


def pick(clients: Clients[Any], target: Target, service: str | None) -> ClientInfo[Any] | None:
    """The one client a call goes to: for a name, the newest client of that
    name; otherwise the least busy of the matching clients (fewest calls to it
    in flight, the earliest connected among equals); None when none matches."""
    candidates = select(clients, target, service)
    if not candidates:
        return None
    if target.name is not None and target.connection_id is None:
        return candidates[-1]
    return min(candidates, key=lambda info: info.outgoing_calls_in_flight)
