"""``brpc call``: call any method of a brpc server with JSON, types learnt by reflection.

The request comes from ``-d JSON``, ``-d @FILE`` or standard input: one JSON
object for methods that take one request; a JSON array, or JSON objects one per
line, for client-streaming and bidi-streaming methods. From a pipe or a terminal
each request goes out as soon as its JSON is complete, so replies to a bidi call
show while the input goes on. Each reply is printed as one line of protobuf
canonical JSON. A failed call prints its status to standard error and exits
with the status code number.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import codecs
import contextlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from grpclib.client import Stream
from grpclib.const import Cardinality

from ._common import CommandError, add_dial_arguments, connect, query_timeout
from ._reflection import MethodInfo, ReflectionClient, split_method

__all__ = ["RELAY_SELECT_KEY", "RELAY_TARGET_KEY", "parse_json_values", "register"]

#: Metadata key naming the connected client a relay forwards a call to.
RELAY_TARGET_KEY = "brpc-target"
#: Metadata key selecting connected clients by labels (``k=v,...``) for a relay.
RELAY_SELECT_KEY = "brpc-select"

_READ_SIZE = 64 << 10

_DESCRIPTION = __doc__.split("\n\n", 1)[1].replace("``", "") if __doc__ else ""
_EPILOG = """\
examples:
  brpc call 127.0.0.1:4433 brpc.testing.v1.Echo/Unary -d '{"text": "hi"}' --ca certs/ca.pem
  brpc call 127.0.0.1:4433 brpc.testing.v1.Echo/ServerStream -d @request.json --ca certs/ca.pem
  printf '{"text":"a"}\\n{"text":"b"}\\n' | brpc call HOST:PORT brpc.testing.v1.Echo/ClientStream

exit status: 0 when the call succeeds; the gRPC status code (1-16) when it fails;
1 when the command cannot connect or cannot use its input.

--client and --select send the call through the server's relay to connected
clients (metadata brpc-target / brpc-select); they need a server with a relay.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "call",
        help="call a method with JSON (types from server reflection)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dial_arguments(parser)
    parser.add_argument(
        "method", metavar="SERVICE/METHOD", help="full method name, e.g. brpc.testing.v1.Echo/Unary"
    )
    parser.add_argument(
        "-d",
        "--data",
        metavar="JSON|@FILE",
        help="request JSON, or @FILE to read it from FILE (@- is standard input); "
        "default: standard input, or {} when that is a terminal and one request is wanted",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="KEY:VALUE",
        help="call metadata (repeatable); keys ending in -bin take base64 values",
    )
    parser.add_argument(
        "--emit-defaults", action="store_true", help="print fields that hold their default value"
    )
    parser.add_argument(
        "--json", action="store_true", help="report a failed call's status as JSON on stderr"
    )
    relay = parser.add_argument_group("relay (needs a server with a relay)")
    relay.add_argument(
        "--client", metavar="NAME", help="send the call to the connected client called NAME"
    )
    relay.add_argument(
        "--select",
        metavar="K=V,...",
        help="send the call to the connected clients carrying these labels",
    )
    parser.set_defaults(func=run)


def parse_json_values(text: str) -> list[Any]:
    """The items of a JSON array, or the JSON values in ``text`` one after another
    (one per line, or separated by any white space)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position, end = 0, len(text)
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise CommandError(f"the request is not JSON: {exc}") from None
        values.append(value)
    if len(values) == 1 and isinstance(values[0], list):
        return list(values[0])
    return values


def call_metadata(args: argparse.Namespace) -> list[tuple[str, str | bytes]]:
    """``-H`` pairs plus the relay keys of ``--client`` and ``--select``."""
    metadata: list[tuple[str, str | bytes]] = []
    for header in args.header:
        key, sep, value = header.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key:
            raise CommandError(f"-H {header!r}: write metadata as key:value")
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value, validate=True)))
            except binascii.Error:
                raise CommandError(f"-H {key}: a -bin key takes a base64 value") from None
        else:
            metadata.append((key, value))
    if args.client:
        metadata.append((RELAY_TARGET_KEY, args.client))
    if args.select:
        pairs = [pair.strip() for pair in args.select.split(",") if pair.strip()]
        if not pairs or any("=" not in pair or pair.startswith("=") for pair in pairs):
            raise CommandError(f"--select {args.select!r}: write labels as key=value,key=value")
        metadata.append((RELAY_SELECT_KEY, ",".join(pairs)))
    return metadata


def _read_input(args: argparse.Namespace, info: MethodInfo) -> str:
    data: str | None = args.data
    if data is None:
        if sys.stdin.isatty() and not info.descriptor.client_streaming:
            return "{}"
        return sys.stdin.read()
    if data == "@-":
        return sys.stdin.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot read the request: {exc}") from None
    return data


def requests_from_input(text: str, info: MethodInfo, pool: Any) -> list[Message]:
    """The request messages ``text`` holds, checked against the method's cardinality."""
    values = parse_json_values(text)
    if not info.descriptor.client_streaming:
        if len(values) > 1:
            raise CommandError(
                f"{info.path} takes one request, the input holds {len(values)} JSON values"
            )
        values = values or [{}]
    return [_request(value, index, info, pool) for index, value in enumerate(values, 1)]


def _request(value: Any, index: int, info: MethodInfo, pool: Any) -> Message:
    try:
        return json_format.ParseDict(value, info.request_class(), descriptor_pool=pool)
    except json_format.ParseError as exc:
        type_name = info.descriptor.input_type.full_name
        raise CommandError(f"request {index} is not a valid {type_name}: {exc}") from None


class JsonValueSplitter:
    """Splits text that arrives in pieces into the JSON values in it, each as soon
    as it is complete (sans-IO: text in, values out).

    A value still incomplete is parsed again when a line ends (while the pending
    text is short, as typed requests are) or when the pending text has doubled,
    so a large document costs linear time however it is cut.
    """

    _RETRY_ON_NEWLINE_BELOW = 64 << 10

    def __init__(self) -> None:
        self._pending = ""
        self._failed_at = 0

    def feed(self, text: str) -> list[Any]:
        """Values completed by ``text``."""
        self._pending += text
        short = len(self._pending) < self._RETRY_ON_NEWLINE_BELOW
        if not (("\n" in text and short) or len(self._pending) >= 2 * self._failed_at):
            return []
        return self._take(final=False)

    def finish(self) -> list[Any]:
        """Values left at the end of the input; CommandError if the rest is not JSON."""
        return self._take(final=True)

    def _take(self, *, final: bool) -> list[Any]:
        values: list[Any] = []
        decoder = json.JSONDecoder()
        while True:
            pending = self._pending.lstrip()
            self._pending = pending
            if not pending:
                self._failed_at = 0
                return values
            try:
                value, end = decoder.raw_decode(pending)
            except json.JSONDecodeError as exc:
                if final:
                    raise CommandError(f"the request is not JSON: {exc}") from None
                self._failed_at = len(pending)
                return values
            if not final and end == len(pending) and not isinstance(value, (dict, list, str)):
                # A number or a literal at the very end may go on in the next piece.
                return values
            values.append(value)
            self._pending = pending[end:]
            self._failed_at = 0


async def run(args: argparse.Namespace) -> int:
    try:
        service, method = split_method(args.method)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    metadata = call_metadata(args)
    async with await connect(args) as conn:
        schema = await ReflectionClient(conn, timeout=query_timeout(args)).schema_for([service])
        try:
            info = schema.method(service, method)
        except KeyError as exc:
            raise CommandError(f"the server has no method {service}/{method}") from exc
        descriptor = info.descriptor
        cardinality = {
            (False, False): Cardinality.UNARY_UNARY,
            (False, True): Cardinality.UNARY_STREAM,
            (True, False): Cardinality.STREAM_UNARY,
            (True, True): Cardinality.STREAM_STREAM,
        }[(descriptor.client_streaming, descriptor.server_streaming)]
        streamed = descriptor.client_streaming and args.data in (None, "@-")
        async with contextlib.AsyncExitStack() as stack:
            stdin = await stack.enter_async_context(_stdin_pipe()) if streamed else None
            requests = (
                []
                if stdin is not None
                else requests_from_input(_read_input(args, info), info, schema.pool)
            )
            async with conn.request(
                info.path,
                cardinality,
                info.request_class,
                info.reply_class,
                timeout=args.timeout,
                metadata=metadata,
            ) as stream:
                await stream.send_request()
                if stdin is not None:
                    await _exchange(
                        _send_from_pipe(stream, stdin, info, schema.pool),
                        _print_replies(stream, args, schema.pool),
                    )
                    return 0
                if descriptor.client_streaming:
                    for request in requests:
                        await stream.send_message(request)
                    await stream.end()
                else:
                    await stream.send_message(requests[0], end=True)
                await _print_replies(stream, args, schema.pool)
    return 0


async def _print_replies(
    stream: Stream[Message, Message], args: argparse.Namespace, pool: Any
) -> None:
    while (reply := await stream.recv_message()) is not None:
        document = json_format.MessageToDict(
            reply,
            always_print_fields_with_no_presence=args.emit_defaults,
            descriptor_pool=pool,
        )
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
        sys.stdout.flush()


async def _exchange(send: Coroutine[Any, Any, None], receive: Coroutine[Any, Any, None]) -> None:
    """Run ``send`` and ``receive`` together: the first failure cancels the other,
    and the end of ``receive`` (the server finished) stops ``send``."""
    try:
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(send)

            async def receive_then_stop() -> None:
                await receive
                sender.cancel()

            group.create_task(receive_then_stop())
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


@contextlib.asynccontextmanager
async def _stdin_pipe() -> AsyncIterator[asyncio.StreamReader | None]:
    """Standard input as a stream reader when it is a pipe or a terminal (so requests
    go out as they are typed or written), or None for a file and anything else."""
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or os.isatty(fd)):
        yield None
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    blocking = os.get_blocking(fd)
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except (OSError, ValueError):
        pipe.close()
        os.set_blocking(fd, blocking)
        yield None
        return
    try:
        yield reader
    finally:
        transport.close()
        # The pipe shares fd 0's open file, which the transport made non-blocking;
        # leave the terminal or pipe as it was for whoever reads it next.
        os.set_blocking(fd, blocking)


async def _send_from_pipe(
    stream: Stream[Message, Message], reader: asyncio.StreamReader, info: MethodInfo, pool: Any
) -> None:
    """Send each JSON value (array items one by one) as soon as it is complete."""
    splitter = JsonValueSplitter()
    text = codecs.getincrementaldecoder("utf-8")()
    sent = 0
    while True:
        chunk = await reader.read(_READ_SIZE)
        try:
            decoded = text.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise CommandError(f"the request is not UTF-8 text: {exc}") from None
        values = splitter.feed(decoded) if chunk else [*splitter.feed(decoded), *splitter.finish()]
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                sent += 1
                await stream.send_message(_request(item, sent, info, pool))
        if not chunk:
            break
    await stream.end()
