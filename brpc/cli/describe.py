"""``brpc describe``: a service, method, message or enum, learnt by reflection, as proto text."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    MethodDescriptorProto,
    ServiceDescriptorProto,
)
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ._common import (
    CommandError,
    add_dial_arguments,
    add_json_argument,
    connect,
    print_json,
    query_timeout,
)
from ._reflection import ReflectionClient, Schema

__all__ = ["describe_symbol", "register"]

_INDENT = "  "
_NAMED_TYPES = (
    FieldDescriptorProto.TYPE_MESSAGE,
    FieldDescriptorProto.TYPE_ENUM,
    FieldDescriptorProto.TYPE_GROUP,
)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "describe",
        help="show a service, method, message or enum as proto text (server reflection)",
        description="Show the definition of SYMBOL (a full service, method, message or enum "
        "name, e.g. brpc.testing.v1.Echo, brpc.testing.v1.Echo/Unary or "
        "brpc.testing.v1.EchoRequest) as the server's reflection describes it.",
    )
    add_dial_arguments(parser)
    parser.add_argument("symbol", metavar="SYMBOL", help="a full symbol name")
    add_json_argument(parser)
    parser.set_defaults(func=run)


def _field_type(field: FieldDescriptorProto) -> str:
    if field.type in _NAMED_TYPES:
        return field.type_name
    return FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()


def _field_line(field: FieldDescriptorProto, maps: dict[str, DescriptorProto]) -> str:
    entry = maps.get(field.type_name.rsplit(".", 1)[-1]) if field.type_name else None
    if entry is not None and field.label == FieldDescriptorProto.LABEL_REPEATED:
        key, value = entry.field[0], entry.field[1]
        return f"map<{_field_type(key)}, {_field_type(value)}> {field.name} = {field.number};"
    prefix = ""
    if field.label == FieldDescriptorProto.LABEL_REPEATED:
        prefix = "repeated "
    elif field.label == FieldDescriptorProto.LABEL_REQUIRED:
        prefix = "required "
    elif field.proto3_optional:
        prefix = "optional "
    return f"{prefix}{_field_type(field)} {field.name} = {field.number};"


def render_message(proto: DescriptorProto, depth: int = 0) -> list[str]:
    """``message Name { ... }`` lines, nested messages and enums included."""
    pad = _INDENT * depth
    inner = _INDENT * (depth + 1)
    maps = {nested.name: nested for nested in proto.nested_type if nested.options.map_entry}
    lines = [f"{pad}message {proto.name} {{"]
    done_oneofs: set[int] = set()
    for field in proto.field:
        if field.HasField("oneof_index") and not field.proto3_optional:
            index = field.oneof_index
            if index in done_oneofs:
                continue
            done_oneofs.add(index)
            lines.append(f"{inner}oneof {proto.oneof_decl[index].name} {{")
            lines.extend(
                f"{inner}{_INDENT}{_field_line(member, maps)}"
                for member in proto.field
                if member.HasField("oneof_index")
                and member.oneof_index == index
                and not member.proto3_optional
            )
            lines.append(f"{inner}}}")
        else:
            lines.append(f"{inner}{_field_line(field, maps)}")
    for nested in proto.nested_type:
        if not nested.options.map_entry:
            lines.extend(render_message(nested, depth + 1))
    for enum in proto.enum_type:
        lines.extend(render_enum(enum, depth + 1))
    lines.append(f"{pad}}}")
    return lines


def render_enum(proto: EnumDescriptorProto, depth: int = 0) -> list[str]:
    pad = _INDENT * depth
    lines = [f"{pad}enum {proto.name} {{"]
    lines.extend(f"{pad}{_INDENT}{value.name} = {value.number};" for value in proto.value)
    lines.append(f"{pad}}}")
    return lines


def render_method(proto: MethodDescriptorProto) -> str:
    request = ("stream " if proto.client_streaming else "") + proto.input_type
    reply = ("stream " if proto.server_streaming else "") + proto.output_type
    return f"rpc {proto.name}({request}) returns ({reply});"


def render_service(proto: ServiceDescriptorProto) -> list[str]:
    lines = [f"service {proto.name} {{"]
    lines.extend(f"{_INDENT}{render_method(method)}" for method in proto.method)
    lines.append("}")
    return lines


def describe_symbol(schema: Schema, symbol: str) -> tuple[str, str, Any, list[str]]:
    """``(kind, file name, descriptor proto, proto text lines)`` for ``symbol``."""
    pool = schema.pool
    finders: list[tuple[str, Any]] = [
        ("service", pool.FindServiceByName),
        ("message", pool.FindMessageTypeByName),
        ("enum", pool.FindEnumTypeByName),
        ("method", pool.FindMethodByName),
    ]
    for kind, find in finders:
        try:
            descriptor = find(symbol)
        except KeyError:
            continue
        if isinstance(descriptor, MethodDescriptor):
            method_proto = MethodDescriptorProto()
            descriptor.CopyToProto(method_proto)
            file_name = descriptor.containing_service.file.name
            return kind, file_name, method_proto, [render_method(method_proto)]
        proto: Any = {
            "service": ServiceDescriptorProto,
            "message": DescriptorProto,
            "enum": EnumDescriptorProto,
        }[kind]()
        descriptor.CopyToProto(proto)
        if kind == "service":
            lines = render_service(proto)
        elif kind == "message":
            lines = render_message(proto)
        else:
            lines = render_enum(proto)
        return kind, descriptor.file.name, proto, lines
    raise CommandError(f"the server's files define no service, method, message or enum {symbol}")


async def _schema_defining(reflection: ReflectionClient, symbol: str) -> Schema:
    """The files that define ``symbol``, or its enclosing symbol: grpclib's reflection
    does not find methods by name, but finds their service."""
    try:
        return await reflection.schema_for([symbol])
    except GRPCError as exc:
        parent = symbol.rpartition(".")[0]
        if exc.status is not Status.NOT_FOUND or "." not in parent:
            raise
    try:
        return await reflection.schema_for([parent])
    except GRPCError as exc:
        if exc.status is Status.NOT_FOUND:
            raise GRPCError(
                Status.NOT_FOUND, f"the server does not know the symbol {symbol}"
            ) from None
        raise


async def run(args: argparse.Namespace) -> int:
    symbol = args.symbol.strip().lstrip(".").lstrip("/").replace("/", ".")
    async with await connect(args) as conn:
        schema = await _schema_defining(ReflectionClient(conn, timeout=query_timeout(args)), symbol)
    kind, file_name, proto, lines = describe_symbol(schema, symbol)
    if args.json:
        print_json(
            {
                "symbol": symbol,
                "kind": kind,
                "file": file_name,
                "descriptor": json_format.MessageToDict(proto),
            }
        )
    else:
        article = "an" if kind == "enum" else "a"
        print(f"{symbol} is {article} {kind} (from {file_name}):")
        print("\n".join(lines))
    return 0
