"""Message types for JSON: where the gateway finds a method's request and reply types.

Binary protobuf bodies pass through untouched; JSON bodies need the method's
descriptors. :class:`TypeFinder` looks, in order, in a descriptor-set file
(``descriptors=``), in this process's default descriptor pool (every
generated ``*_pb2`` module imported here, the server's own services
included), and in the reflection service (``grpc.reflection.v1`` or
``v1alpha``, as grpclib's ``ServerReflection.extend`` serves it) of the client
the call goes to. Files learnt by reflection are cached by digest: clients
that serve identical files share one pool.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message
from grpclib.const import Cardinality
from grpclib.reflection.v1 import reflection_grpc as v1_grpc
from grpclib.reflection.v1 import reflection_pb2 as v1_pb2
from grpclib.reflection.v1alpha import reflection_grpc as v1alpha_grpc
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from ..peer import ClientInfo

__all__ = ["MethodTypes", "TypeFinder", "UnknownMethod"]

log = logging.getLogger(__name__)

#: The well-known types, loaded into the default pool: reflected and given
#: descriptor sets may import them without including them.
WELL_KNOWN_TYPES = (
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)

_REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
#: Dependencies followed per reflection lookup, a bound on what a client can make us fetch.
_MAX_REFLECTED_FILES = 256


class UnknownMethod(LookupError):
    """The service is known but has no such method."""


@dataclass(frozen=True)
class MethodTypes:
    """A method's descriptors and the message classes to read and write JSON."""

    method: MethodDescriptor
    request: type[Message]
    reply: type[Message]

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def cardinality(self) -> Cardinality:
        return _cardinality(self.client_streaming, self.server_streaming)


def _cardinality(client_streaming: bool, server_streaming: bool) -> Cardinality:
    for cardinality in Cardinality:
        if (
            cardinality.value.client_streaming == client_streaming
            and cardinality.value.server_streaming == server_streaming
        ):
            return cardinality
    raise AssertionError("every combination is a cardinality")


def _method_in(
    pool: descriptor_pool.DescriptorPool, service: str, method: str
) -> MethodTypes | None:
    try:
        service_descriptor = pool.FindServiceByName(service)
    except KeyError:
        return None
    method_descriptor = service_descriptor.methods_by_name.get(method)
    if method_descriptor is None:
        raise UnknownMethod(f"service {service} has no method {method!r}")
    return MethodTypes(
        method=method_descriptor,
        request=_message_class(method_descriptor.input_type),
        reply=_message_class(method_descriptor.output_type),
    )


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def load_descriptor_set(path: str | os.PathLike[str]) -> descriptor_pool.DescriptorPool:
    """A pool of the files in a ``FileDescriptorSet`` (``protoc --descriptor_set_out
    --include_imports``); files missing from it are taken from the default pool."""
    with open(path, "rb") as file:
        files = descriptor_pb2.FileDescriptorSet.FromString(file.read()).file
    return _build_pool({proto.name: proto for proto in files})


def _build_pool(
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, trail: tuple[str, ...]) -> None:
        if name in added:
            return
        if name in trail:
            raise ValueError(f"import cycle through {name}")
        proto = files.get(name)
        if proto is None:
            proto = descriptor_pb2.FileDescriptorProto()
            try:
                descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
            except KeyError:
                raise ValueError(f"file {name} is imported but was not given") from None
        for dependency in proto.dependency:
            add(dependency, (*trail, name))
        pool.Add(proto)
        added.add(name)

    for name in files:
        add(name, ())
    return pool


class TypeFinder:
    """Finds methods' types; one per gateway."""

    def __init__(self, descriptors: str | os.PathLike[str] | None = None) -> None:
        self._pools: list[descriptor_pool.DescriptorPool] = []
        if descriptors is not None:
            self._pools.append(load_descriptor_set(descriptors))
        self._pools.append(descriptor_pool.Default())
        #: digest of a reflected file set -> its pool.
        self._reflected: dict[str, descriptor_pool.DescriptorPool] = {}
        #: (connection id, service) -> digest of the files its reflection gave.
        self._client_files: dict[tuple[str, str], str] = {}

    def local(self, service: str, method: str) -> MethodTypes | None:
        """Types from the descriptor set or this process's pool; None if the
        service is unknown here; UnknownMethod if it is known without ``method``."""
        for pool in self._pools:
            found = _method_in(pool, service, method)
            if found is not None:
                return found
        return None

    async def find(
        self, service: str, method: str, clients: list[ClientInfo[Any]], *, timeout: float = 5.0
    ) -> MethodTypes | None:
        """Local types, else those of the first of ``clients`` whose reflection knows them."""
        found = self.local(service, method)
        if found is not None:
            return found
        for client in clients:
            pool = await self._client_pool(client, service, timeout)
            if pool is not None:
                found = _method_in(pool, service, method)
                if found is not None:
                    return found
        return None

    async def _client_pool(
        self, client: ClientInfo[Any], service: str, timeout: float
    ) -> descriptor_pool.DescriptorPool | None:
        key = (client.connection_id, service)
        digest = self._client_files.get(key)
        if digest is not None:
            return self._reflected.get(digest)
        reflection = next((name for name in _REFLECTION_SERVICES if name in client.services), None)
        if reflection is None:
            return None
        try:
            files = await _reflect(client, reflection, service, timeout)
        except Exception as exc:  # a client's broken reflection must not break the gateway
            log.info("reflection of %r for %s failed: %s", client, service, exc)
            return None
        if not files:
            self._client_files[key] = ""  # its reflection does not know the service
            return None
        hasher = hashlib.sha256()
        for name in sorted(files):
            hasher.update(files[name].SerializeToString(deterministic=True))
        digest = hasher.hexdigest()
        pool = self._reflected.get(digest)
        if pool is None:
            try:
                pool = _build_pool(files)
            except (ValueError, TypeError) as exc:
                log.info("descriptors reflected by %r do not build: %s", client, exc)
                return None
            self._reflected[digest] = pool
        self._client_files[key] = digest
        return pool

    def forget(self, connection_id: str) -> None:
        """Drop what is cached about a client that left."""
        for key in [key for key in self._client_files if key[0] == connection_id]:
            del self._client_files[key]


async def _reflect(
    client: ClientInfo[Any], reflection: str, service: str, timeout: float
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The file defining ``service`` and its imports, from the client's reflection."""
    stub: Any
    if reflection.endswith("v1alpha.ServerReflection"):
        request_type: Callable[..., Any] = v1alpha_pb2.ServerReflectionRequest
        stub = v1alpha_grpc.ServerReflectionStub(client.channel)
    else:
        request_type = v1_pb2.ServerReflectionRequest
        stub = v1_grpc.ServerReflectionStub(client.channel)
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    async with stub.ServerReflectionInfo.open(timeout=timeout) as stream:
        await stream.send_message(request_type(file_containing_symbol=service))
        asked: set[str] = set()
        while True:
            response = await stream.recv_message()
            if response is None:
                break
            if response.HasField("error_response"):
                if not files:
                    break
            else:
                for blob in response.file_descriptor_response.file_descriptor_proto:
                    proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
                    files.setdefault(proto.name, proto)
            wanted = [
                dependency
                for proto in files.values()
                for dependency in proto.dependency
                if dependency not in files
                and dependency not in asked
                and not _in_default_pool(dependency)
            ]
            if not wanted or len(files) >= _MAX_REFLECTED_FILES:
                break
            asked.add(wanted[0])
            await stream.send_message(request_type(file_by_filename=wanted[0]))
        await stream.end()
    return files


def _in_default_pool(name: str) -> bool:
    try:
        descriptor_pool.Default().FindFileByName(name)
    except KeyError:
        return False
    return True
