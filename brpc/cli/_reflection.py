"""What a server's reflection service says, turned into a descriptor pool.

:class:`ReflectionClient` asks ``grpc.reflection.v1.ServerReflection`` (falling
back to ``v1alpha``) over any grpclib channel, a brpc connection included, for
the services a server lists and the files that define a symbol, with their
dependencies. :class:`Schema` holds those files in a private
``DescriptorPool`` and gives message classes (``message_factory``) so requests
and replies convert to and from JSON without generated code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.reflection.v1 import reflection_grpc as v1_grpc
from grpclib.reflection.v1 import reflection_pb2 as v1_pb2
from grpclib.reflection.v1alpha import reflection_grpc as v1alpha_grpc
from grpclib.reflection.v1alpha import reflection_pb2 as v1alpha_pb2

__all__ = ["MethodInfo", "ReflectionClient", "Schema", "method_kind", "split_method"]

#: How many dependency rounds a file may need (a bound on hostile answers).
_MAX_DEPENDENCY_ROUNDS = 64


def split_method(text: str) -> tuple[str, str]:
    """``pkg.Service/Method``, ``/pkg.Service/Method`` or ``pkg.Service.Method``
    as ``(service, method)``; ValueError when it is none of those."""
    path = text.strip().lstrip("/")
    if "/" in path:
        service, _, method = path.partition("/")
    else:
        service, _, method = path.rpartition(".")
    if not service or not method or "/" in method:
        raise ValueError(
            f"{text!r} is not a method: write it as package.Service/Method, "
            "for example brpc.testing.v1.Echo/Unary"
        )
    return service, method


def method_kind(method: MethodDescriptor) -> str:
    """``unary``, ``server-streaming``, ``client-streaming`` or ``bidi-streaming``."""
    if method.client_streaming and method.server_streaming:
        return "bidi-streaming"
    if method.client_streaming:
        return "client-streaming"
    if method.server_streaming:
        return "server-streaming"
    return "unary"


@dataclass(frozen=True)
class MethodInfo:
    """A method as reflection describes it, with message classes for its types."""

    descriptor: MethodDescriptor
    request_class: type[Message]
    reply_class: type[Message]

    @property
    def path(self) -> str:
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def kind(self) -> str:
        return method_kind(self.descriptor)


class Schema:
    """File descriptors learnt from a server, in a pool of their own."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self._added: set[str] = set()

    def add_files(self, files: Sequence[FileDescriptorProto]) -> None:
        """Add ``files`` (each after the files it imports, which must be among them
        or already added)."""
        by_name = {f.name: f for f in files}

        def add(name: str, trail: tuple[str, ...]) -> None:
            if name in self._added:
                return
            if name in trail:
                raise ValueError(f"the server's files import each other in a cycle: {name}")
            proto = by_name.get(name)
            if proto is None:
                raise ValueError(f"the server did not send {name}, which another file imports")
            for dependency in proto.dependency:
                add(dependency, (*trail, name))
            self.pool.Add(proto)
            self._added.add(name)

        for name in by_name:
            add(name, ())

    def service(self, name: str) -> ServiceDescriptor:
        return self.pool.FindServiceByName(name)

    def message(self, name: str) -> Descriptor:
        return self.pool.FindMessageTypeByName(name)

    def message_class(self, descriptor: Descriptor) -> type[Message]:
        return message_factory.GetMessageClass(descriptor)

    def method(self, service: str, method: str) -> MethodInfo:
        """The method ``service/method``; KeyError names what is missing."""
        found = self.service(service).methods_by_name.get(method)
        if found is None:
            raise KeyError(f"service {service} has no method {method}")
        return MethodInfo(
            found,
            self.message_class(found.input_type),
            self.message_class(found.output_type),
        )


class ReflectionClient:
    """Asks a server's reflection service; one short call per question."""

    def __init__(self, channel: Channel, *, timeout: float | None = None) -> None:
        self._channel = channel
        self._timeout = timeout
        self._v1alpha = False
        self._files: dict[str, FileDescriptorProto] = {}

    async def _ask(self, **question: Any) -> Any:
        """One reflection request and its response (v1, else v1alpha)."""
        if not self._v1alpha:
            try:
                replies: list[Any] = await v1_grpc.ServerReflectionStub(
                    self._channel
                ).ServerReflectionInfo(
                    [v1_pb2.ServerReflectionRequest(**question)], timeout=self._timeout
                )
            except GRPCError as exc:
                if exc.status is not Status.UNIMPLEMENTED:
                    raise
                self._v1alpha = True
            else:
                return self._answer(replies)
        try:
            replies = await v1alpha_grpc.ServerReflectionStub(self._channel).ServerReflectionInfo(
                [v1alpha_pb2.ServerReflectionRequest(**question)], timeout=self._timeout
            )
        except GRPCError as exc:
            if exc.status is Status.UNIMPLEMENTED:
                raise GRPCError(
                    Status.UNIMPLEMENTED,
                    "the server has no reflection service (grpc.reflection.v1."
                    "ServerReflection); serve it with grpclib.reflection.service."
                    "ServerReflection.extend(handlers)",
                ) from None
            raise
        return self._answer(replies)

    @staticmethod
    def _answer(replies: list[Any]) -> Any:
        if len(replies) != 1:
            raise GRPCError(Status.INTERNAL, f"reflection answered {len(replies)} times, not once")
        reply = replies[0]
        if reply.HasField("error_response"):
            error = reply.error_response
            raise GRPCError(Status(error.error_code), error.error_message)
        return reply

    async def list_services(self) -> list[str]:
        """The service names the server lists."""
        reply = await self._ask(list_services="")
        return [service.name for service in reply.list_services_response.service]

    async def schema_for(self, symbols: Sequence[str]) -> Schema:
        """A schema holding the files that define ``symbols`` and all they import.

        A symbol the server does not know raises ``GRPCError(NOT_FOUND)``.
        """
        for symbol in symbols:
            try:
                reply = await self._ask(file_containing_symbol=symbol)
            except GRPCError as exc:
                if exc.status is Status.NOT_FOUND:
                    raise GRPCError(
                        Status.NOT_FOUND, f"the server does not know the symbol {symbol}"
                    ) from None
                raise
            self._keep(reply)
        for _ in range(_MAX_DEPENDENCY_ROUNDS):
            missing = {
                dependency
                for proto in self._files.values()
                for dependency in proto.dependency
                if dependency not in self._files
            }
            if not missing:
                break
            for name in sorted(missing):
                self._keep(await self._ask(file_by_filename=name))
        schema = Schema()
        schema.add_files(list(self._files.values()))
        return schema

    def _keep(self, reply: Any) -> None:
        for blob in reply.file_descriptor_response.file_descriptor_proto:
            proto = FileDescriptorProto.FromString(blob)
            self._files.setdefault(proto.name, proto)
