"""Server reflection of a relaying server: its own services and its clients'.

:class:`RelayReflection` serves ``grpc.reflection.v1`` and ``v1alpha`` (same
messages, two packages). It lists the server's own services and every service
a connected client says it serves. Descriptors of the server's own services
come from this process's descriptor pool; those of a client's services are
fetched from a client serving them, over its brpc connection, through the
reflection service the client serves (``brpc.dial(..., reflection=True)``):
each service's file, then the files it imports, by name.

Fetched descriptors are cached under a digest of the set of services a client
declares in its hello, so ten thousand clients declaring the same services
cost one fetch (clients that declare the same service names are taken to
serve the same descriptors). A failed fetch is not cached.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor_pb2 import DescriptorProto, FileDescriptorProto
from google.protobuf.descriptor_pool import Default
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.reflection.v1 import reflection_pb2 as v1
from grpclib.reflection.v1.reflection_grpc import ServerReflectionBase as V1Base
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub as V1Stub
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha
from grpclib.reflection.v1alpha.reflection_grpc import ServerReflectionBase as V1AlphaBase
from grpclib.server import Stream

from .._calls.serving import service_names
from ..peer import ClientInfo

if TYPE_CHECKING:
    from .._calls.base import Servable
    from .forward import Bound

__all__ = ["DescriptorSet", "RelayReflection"]

log = logging.getLogger(__name__)

_REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
_FETCH_TIMEOUT = 10.0
_MAX_FILES = 256


class DescriptorSet:
    """Serialized ``FileDescriptorProto``\\ s of one client kind, indexed by file and symbol."""

    def __init__(self, files: Iterable[bytes]) -> None:
        self.files: dict[str, bytes] = {}
        self.symbols: dict[str, str] = {}
        for data in files:
            proto = FileDescriptorProto.FromString(data)
            self.files[proto.name] = data
            prefix = f"{proto.package}." if proto.package else ""
            for message in proto.message_type:
                self._index_message(prefix, message, proto.name)
            for enum in proto.enum_type:
                self.symbols[prefix + enum.name] = proto.name
            for extension in proto.extension:
                self.symbols[prefix + extension.name] = proto.name
            for service in proto.service:
                self.symbols[prefix + service.name] = proto.name
                for method in service.method:
                    self.symbols[f"{prefix}{service.name}.{method.name}"] = proto.name

    def _index_message(self, prefix: str, message: DescriptorProto, file: str) -> None:
        name = prefix + message.name
        self.symbols[name] = file
        for nested in message.nested_type:
            self._index_message(f"{name}.", nested, file)
        for enum in message.enum_type:
            self.symbols[f"{name}.{enum.name}"] = file


def _digest(services: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(services)).encode()).hexdigest()


async def _fetch(info: ClientInfo[Any]) -> DescriptorSet:
    """Every file a client's services need, through the reflection service it serves."""
    if _REFLECTION_SERVICES[0] not in info.services:
        raise LookupError(
            f"client {info.name or info.connection_id} does not serve reflection "
            "(dial it with reflection=True)"
        )
    files: dict[str, bytes] = {}
    wanted: list[v1.ServerReflectionRequest] = [
        v1.ServerReflectionRequest(file_containing_symbol=service)
        for service in info.services
        if service not in _REFLECTION_SERVICES and not service.startswith("grpc.health.")
    ]
    async with V1Stub(info.channel).ServerReflectionInfo.open(timeout=_FETCH_TIMEOUT) as call:
        asked: set[str] = set()
        while wanted and len(files) < _MAX_FILES:
            await call.send_message(wanted.pop())
            response = await call.recv_message()
            if response is None:
                break
            if response.HasField("error_response"):
                continue
            for data in response.file_descriptor_response.file_descriptor_proto:
                proto = FileDescriptorProto.FromString(data)
                files[proto.name] = data
                for dependency in proto.dependency:
                    if dependency not in files and dependency not in asked:
                        asked.add(dependency)
                        wanted.append(v1.ServerReflectionRequest(file_by_filename=dependency))
        await call.end()
    return DescriptorSet(files.values())


class RelayReflection:
    """Reflection of a relaying server; :meth:`services` are its v1 and v1alpha services."""

    def __init__(self, bound: Bound, handlers: Sequence[Servable]) -> None:
        self._bound = bound
        self._own = (*service_names(handlers), *_REFLECTION_SERVICES)
        self._pool = Default()
        self._cache: dict[str, asyncio.Task[DescriptorSet]] = {}
        #: How many times descriptors were fetched from a client (one per digest).
        self.fetches = 0

    def services(self) -> list[Servable]:
        return [_V1(self), _V1Alpha(self)]

    def _clients(self) -> list[ClientInfo[Any]]:
        return [info for info in self._bound.server.clients if not info.closed]

    def list_services(self) -> list[str]:
        names = dict.fromkeys(self._own)
        for info in self._clients():
            names.update(dict.fromkeys(info.services))
        return list(names)

    async def _descriptors(self, info: ClientInfo[Any]) -> DescriptorSet:
        key = _digest(info.services)
        task = self._cache.get(key)
        if task is None:
            self.fetches += 1
            # A clean context: the fetch is shared, so it must not inherit one
            # caller's deadline or connection.
            task = asyncio.get_running_loop().create_task(
                _fetch(info), context=contextvars.Context()
            )
            self._cache[key] = task
        try:
            return await asyncio.shield(task)
        except Exception:
            if self._cache.get(key) is task:
                del self._cache[key]
            raise

    def _cached(self) -> list[DescriptorSet]:
        return [
            task.result()
            for task in self._cache.values()
            if task.done() and not task.cancelled() and task.exception() is None
        ]

    async def _remote_file(self, *, symbol: str = "", filename: str = "") -> bytes | None:
        for descriptors in self._cached():
            if symbol and symbol in descriptors.symbols:
                return descriptors.files[descriptors.symbols[symbol]]
            if filename and filename in descriptors.files:
                return descriptors.files[filename]
        if not symbol:
            return None
        for info in self._clients():
            if not any(symbol == s or symbol.startswith(f"{s}.") for s in info.services):
                continue
            if any(symbol == s or symbol.startswith(f"{s}.") for s in self._own):
                return None
            try:
                descriptors = await self._descriptors(info)
            except (GRPCError, LookupError, OSError, TimeoutError) as exc:
                log.info("reflection: no descriptors from %r: %s", info, exc)
                continue
            name = descriptors.symbols.get(symbol)
            return descriptors.files[name] if name is not None else None
        return None

    def _local(self, *, symbol: str = "", filename: str = "") -> bytes | None:
        try:
            found = (
                self._pool.FindFileContainingSymbol(symbol)
                if symbol
                else self._pool.FindFileByName(filename)
            )
        except KeyError:
            return None
        proto = FileDescriptorProto()
        found.CopyToProto(proto)
        return bytes(proto.SerializeToString())

    async def answer(self, request: v1.ServerReflectionRequest) -> v1.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        response = v1.ServerReflectionResponse(valid_host=request.host, original_request=request)
        data: bytes | None = None
        if kind == "list_services":
            response.list_services_response.service.extend(
                v1.ServiceResponse(name=name) for name in self.list_services()
            )
            return response
        if kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            data = await self._remote_file(symbol=symbol) or self._local(symbol=symbol)
        elif kind == "file_by_filename":
            name = request.file_by_filename
            data = self._local(filename=name) or await self._remote_file(filename=name)
        if data is None:
            response.error_response.error_code = Status.NOT_FOUND.value
            response.error_response.error_message = "not found"
        else:
            response.file_descriptor_response.file_descriptor_proto.append(data)
        return response


class _V1(V1Base):
    def __init__(self, reflection: RelayReflection) -> None:
        self._reflection = reflection

    async def ServerReflectionInfo(
        self, stream: Stream[v1.ServerReflectionRequest, v1.ServerReflectionResponse]
    ) -> None:
        async for request in stream:
            await stream.send_message(await self._reflection.answer(request))


class _V1Alpha(V1AlphaBase):
    """v1alpha has the v1 messages under another package: answered through v1."""

    def __init__(self, reflection: RelayReflection) -> None:
        self._reflection = reflection

    async def ServerReflectionInfo(
        self, stream: Stream[v1alpha.ServerReflectionRequest, v1alpha.ServerReflectionResponse]
    ) -> None:
        async for request in stream:
            answer = await self._reflection.answer(
                v1.ServerReflectionRequest.FromString(request.SerializeToString())
            )
            await stream.send_message(
                v1alpha.ServerReflectionResponse.FromString(answer.SerializeToString())
            )
