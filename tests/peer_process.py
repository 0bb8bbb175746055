"""A brpc client in its own process, for tests that kill it.

``python tests/peer_process.py TARGET CA [DEAD_PEER_TIMEOUT]`` dials TARGET,
serves the test Echo service (whose "block" request never answers), prints
"connected <id>" and waits forever.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probes import Probe

import brpc


async def main(target: str, ca: str, dead_peer_timeout: float) -> None:
    conn = await brpc.dial(
        target,
        services=[Probe()],
        ca=ca,
        name="doomed",
        dead_peer_timeout=dead_peer_timeout,
        keepalive_interval=dead_peer_timeout / 4,
    )
    print(f"connected {conn.connection_id}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 15.0
    asyncio.run(main(sys.argv[1], sys.argv[2], timeout))
