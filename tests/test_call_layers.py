"""Choosing the call layer in the hello: ``call_layer=`` on both sides."""

from __future__ import annotations

from typing import Any

import pytest
from probes import Probe

import brpc
from brpc.testing.v1.echo_grpc import EchoStub
from brpc.testing.v1.echo_pb2 import EchoRequest


@pytest.mark.defaults_only  # None: the default (BRPC_CALL_LAYER changes it)
@pytest.mark.parametrize(
    ("server_layers", "client_layers", "chosen"),
    [
        (None, None, "streams"),
        (None, "lanes", "lanes"),
        ("lanes", None, "lanes"),
        (("lanes", "streams"), ("streams", "lanes"), "streams"),  # the client's order wins
        ("streams", ("lanes", "streams"), "streams"),
    ],
)
async def test_the_first_layer_the_client_offers_that_the_server_accepts(
    make_server: Any, connect: Any, server_layers: Any, client_layers: Any, chosen: str
) -> None:
    server_options = {} if server_layers is None else {"call_layer": server_layers}
    client_options = {} if client_layers is None else {"call_layer": client_layers}
    server = await make_server([Probe()], client_stub=EchoStub, **server_options)
    conn = await connect(server, services=[Probe()], **client_options)
    assert conn.call_layer == chosen
    assert (await EchoStub(conn).Unary(EchoRequest(text="up"))).text == "up"
    (info,) = server.clients_snapshot()
    assert (await info.stub.Unary(EchoRequest(text="down"))).text == "down"


async def test_no_common_layer_is_refused(make_server: Any, connect: Any) -> None:
    server = await make_server([Probe()], call_layer="lanes")
    with pytest.raises(brpc.RefusedError) as refused:
        await connect(server, call_layer="streams", reconnect=False)
    assert refused.value.code == "INVALID_HELLO"
    assert "'streams'" in refused.value.reason and "'lanes'" in refused.value.reason


@pytest.mark.parametrize("value", ["http3", (), ("streams", "streams")])
async def test_bad_settings_are_refused_at_once(certs: Any, value: Any) -> None:
    with pytest.raises(ValueError, match="call_layer"):
        brpc.Server([], certfile=certs.server_cert, keyfile=certs.server_key, call_layer=value)
    with pytest.raises(ValueError, match="call_layer"):
        await brpc.dial("127.0.0.1:1", call_layer=value)


async def test_reconnect_follows_the_new_servers_layer(make_server: Any, connect: Any) -> None:
    first = await make_server([Probe()], call_layer="streams")
    port = first.port
    conn = await connect(
        first,
        call_layer=("streams", "lanes"),
        reconnect=brpc.ReconnectPolicy(initial_delay=0.01, max_delay=0.05),
    )
    assert conn.call_layer == "streams"
    first.close()
    await first.wait_closed()
    second = await make_server([Probe()], call_layer="lanes", port=port)
    await conn.wait_ready(timeout=10)
    assert conn.call_layer == "lanes"
    assert (await EchoStub(conn).Unary(EchoRequest(text="again"))).text == "again"
    assert second.clients_snapshot()


async def test_the_layer_not_negotiated_makes_nothing(make_server: Any, connect: Any) -> None:
    """A client offers lanes after streams; on a streams connection it makes no
    lane pool and no HTTP/2 server for it (an idle connection should cost little)."""
    server = await make_server([Probe()], client_stub=EchoStub, call_layer="streams")
    conn = await connect(server, services=[Probe()], call_layer=("streams", "lanes"))
    assert (await EchoStub(conn).Unary(EchoRequest(text="up"))).text == "up"
    (info,) = server.clients_snapshot()
    assert (await info.stub.Unary(EchoRequest(text="down"))).text == "down"
    assert set(conn._caller._callers) == {"streams"}
    assert conn._layers["lanes"]._server is None


def test_brpc_call_layer_sets_the_default(monkeypatch: Any) -> None:
    from brpc.options import Options

    monkeypatch.setenv("BRPC_CALL_LAYER", "lanes, streams")
    assert Options().call_layers == ("lanes", "streams")
    monkeypatch.setenv("BRPC_CALL_LAYER", "")
    assert Options().call_layers == ("streams", "lanes")
    for bad in ("http3", "lanes,lanes", "streams,"):
        monkeypatch.setenv("BRPC_CALL_LAYER", bad)
        with pytest.raises(ValueError, match="BRPC_CALL_LAYER="):
            Options()
