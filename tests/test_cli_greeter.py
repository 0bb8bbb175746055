"""``brpc call`` as a new user tries it: the greeter, and a method a client serves.

The greeter server serves reflection; with ``relay=True`` it relays calls it
does not serve to its connected clients, so the command reaches the Namer a
greeter client serves, through the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import brpc
from examples.greeter.client import Namer
from examples.greeter.server import make_server


async def _brpc(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "brpc.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_brpc_call_reaches_the_greeter_and_a_client_served_method(certs: Any) -> None:
    server = make_server(certs.directory, relay=True)
    await server.start("127.0.0.1", 0)
    try:
        ca = ["--ca", str(certs.ca)]
        code, out, err = await _brpc(
            "call", server.address, "greeter.v1.Greeter/Greet", "-d", '{"greeting": "Hi"}', *ca
        )
        assert code == 0, err
        assert json.loads(out) == {"message": "Hi stranger"}
        async with brpc.dial(
            server.address, services=[Namer("ada")], ca=certs.ca, name="ada", reflection=True
        ):
            code, out, err = await _brpc(
                "call", server.address, "greeter.v1.Namer/Name", "--client", "ada", "-d", "{}", *ca
            )
            assert code == 0, err
            assert json.loads(out) == {"name": "ada"}
            code, out, err = await _brpc(
                "call", server.address, "greeter.v1.Namer/Name", "--client", "bob", "-d", "{}", *ca
            )
            assert code == 14, (out, err)  # UNAVAILABLE: no client named bob
            assert "bob" in err
    finally:
        server.close()
        await server.wait_closed()
