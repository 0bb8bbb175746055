"""A brpc server in its own process, for tests that kill it.

``python tests/server_process.py PORT CERTFILE KEYFILE`` serves the test Echo
service on 127.0.0.1:PORT, prints "listening PORT" and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import brpc
from brpc.testing import EchoService


async def main(port: int, certfile: str, keyfile: str) -> None:
    server = brpc.Server([EchoService()], certfile=certfile, keyfile=keyfile)
    await server.start("127.0.0.1", port)
    print(f"listening {server.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
