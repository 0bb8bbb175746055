"""A directory on a Redis server: :class:`RedisDirectory` (needs ``pip install 'brpc[redis]'``).

This module owns the key layout on Redis, the Lua scripts that change it
atomically, and the change feed over Redis pub/sub. Keys, under ``key_prefix``
(``P``)::

    P seq                    counter: the last change's sequence number
    P servers                set of server IDs that registered and were not yet reaped
    P server:{id}            the server's record (JSON); its liveness: PX = ttl
    P clients:{id}           hash connection ID -> client record (JSON)
    P server-names:{id}      set of the names the server's clients hold
    P names                  hash name -> holder {server_id, connection_id, epoch} (JSON)
    P name-epochs            hash name -> the name's last epoch (never decreases)
    P changes                pub/sub channel: one JSON message per change

Renewing a server is one PEXPIRE on its liveness key (and on its two
companion keys, which carry a longer TTL as a safety net), whatever the number
of its clients. A server whose liveness key expired is *reaped*: its keys and
names go and one ``server_down`` change is published. Every registration and
renewal looks at all servers (O(servers)), and an instance that renews also
looks again when the next other server's liveness is due to run out, so a dead
server is dropped right after its TTL. Every change increments ``seq`` and is
published in the same script, so replicas see a gap in the sequence if they
miss one; a snapshot is read atomically by a script.

Operations fail fast with :class:`~brpc.cluster.DirectoryUnavailable` (each is
bounded by a short timeout and never retried: a retried script could apply a
change twice). A change feed reconnects by itself with exponential backoff,
yielding an UNAVAILABLE marker when it loses Redis and a RESYNC marker when it
is subscribed again. A Redis that restarts without its data starts the
sequence numbers and the names' epochs over; servers notice at their next
renewal (it reports the lapse) and register again with their clients.

The scripts use keys they compute, so they need a standalone Redis (or one
node's keyspace), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from ..registry import DuplicateNames
from .directory import (
    DEFAULT_TTL,
    Change,
    ChangeFeed,
    ChangeKind,
    ClientRecord,
    Directory,
    DirectorySnapshot,
    DirectoryUnavailable,
    NameClaim,
    NameHolder,
    ServerNotRegistered,
    ServerRecord,
)

try:
    import redis.asyncio as _aioredis
    from redis import exceptions as _redis_errors
    from redis.asyncio.retry import Retry as _Retry
    from redis.backoff import NoBackoff as _NoBackoff
except ImportError:  # pragma: no cover - exercised only without the extra
    _aioredis = None  # type: ignore[assignment]

__all__ = ["RedisDirectory"]

log = logging.getLogger(__name__)

_INSTALL_HINT = "RedisDirectory needs the redis package: pip install 'brpc[redis]'"
_DEFAULT_MAX_PENDING = 10_000

# Shared by every script: ARGV[1] is the key prefix.
_LUA_PRELUDE = """
local p = ARGV[1]
local function publish(msg)
  msg.seq = redis.call('INCR', p .. 'seq')
  redis.call('PUBLISH', p .. 'changes', cjson.encode(msg))
end
local function drop_names(sid)
  local key = p .. 'server-names:' .. sid
  for _, name in ipairs(redis.call('SMEMBERS', key)) do
    local cur = redis.call('HGET', p .. 'names', name)
    if cur and cjson.decode(cur).server_id == sid then
      redis.call('HDEL', p .. 'names', name)
    end
  end
  redis.call('DEL', key)
end
local function drop_server(sid)
  drop_names(sid)
  redis.call('DEL', p .. 'server:' .. sid, p .. 'clients:' .. sid)
  redis.call('SREM', p .. 'servers', sid)
  publish({kind = 'server_down', server_id = sid})
end
-- Drops every server whose liveness key is gone; returns the milliseconds until
-- the next liveness key of a server not in `own` expires (-1: none).
local function reap(own)
  local soonest = -1
  for _, sid in ipairs(redis.call('SMEMBERS', p .. 'servers')) do
    local left = redis.call('PTTL', p .. 'server:' .. sid)
    if left == -2 then
      drop_server(sid)
    elseif not own[sid] and left >= 0 and (soonest < 0 or left < soonest) then
      soonest = left
    end
  end
  return soonest
end
local function set_of(first)
  local members = {}
  for i = first, #ARGV do
    members[ARGV[i]] = true
  end
  return members
end
"""

# ARGV: prefix, server_id, record, ttl_ms
_REGISTER_SERVER = """
local sid = ARGV[2]
reap({})
if redis.call('SISMEMBER', p .. 'servers', sid) == 1 then
  drop_names(sid)
end
redis.call('DEL', p .. 'clients:' .. sid)
redis.call('SET', p .. 'server:' .. sid, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', p .. 'servers', sid)
publish({kind = 'server_up', server_id = sid, server = ARGV[3]})
return 1
"""

# ARGV: prefix, server_id, ttl_ms, companion_ttl_ms, server IDs renewed by the caller...
# Returns {1 if it was alive, ms until another server's liveness expires or -1}.
_RENEW_SERVER = """
local sid = ARGV[2]
local alive = redis.call('PEXPIRE', p .. 'server:' .. sid, ARGV[3])
if alive == 1 then
  redis.call('PEXPIRE', p .. 'clients:' .. sid, ARGV[4])
  redis.call('PEXPIRE', p .. 'server-names:' .. sid, ARGV[4])
end
return {alive, reap(set_of(5))}
"""

# ARGV: prefix, server IDs renewed by the caller... Returns as reap().
_REAP = """
return reap(set_of(2))
"""

# ARGV: prefix, server_id
_UNREGISTER_SERVER = """
local sid = ARGV[2]
if redis.call('SISMEMBER', p .. 'servers', sid) == 1
    or redis.call('EXISTS', p .. 'server:' .. sid) == 1 then
  drop_server(sid)
end
return 1
"""

# ARGV: prefix, server_id, connection_id, record, companion_ttl_ms
_REGISTER_CLIENT = """
local sid = ARGV[2]
if redis.call('EXISTS', p .. 'server:' .. sid) == 0 then
  return 0
end
redis.call('HSET', p .. 'clients:' .. sid, ARGV[3], ARGV[4])
redis.call('PEXPIRE', p .. 'clients:' .. sid, ARGV[5])
publish({kind = 'client_added', server_id = sid, client = ARGV[4]})
return 1
"""

# ARGV: prefix, server_id, connection_id
_UNREGISTER_CLIENT = """
local sid = ARGV[2]
local cid = ARGV[3]
local record = redis.call('HGET', p .. 'clients:' .. sid, cid)
if not record then
  return 0
end
redis.call('HDEL', p .. 'clients:' .. sid, cid)
local name = cjson.decode(record).name
if type(name) == 'string' and name ~= '' then
  local cur = redis.call('HGET', p .. 'names', name)
  if cur then
    local holder = cjson.decode(cur)
    if holder.connection_id == cid and holder.server_id == sid then
      redis.call('HDEL', p .. 'names', name)
      redis.call('SREM', p .. 'server-names:' .. sid, name)
      publish({kind = 'name_released', name = name, holder = holder})
    end
  end
end
publish({kind = 'client_removed', server_id = sid, connection_id = cid})
return 1
"""

# ARGV: prefix, name, connection_id, server_id, policy, companion_ttl_ms, identity or ''
# Returns {status, epoch, other holder JSON or ''}; status 1 claimed, 0 refused,
# -1 the claiming server is not live.
_CLAIM_NAME = """
local name = ARGV[2]
local cid = ARGV[3]
local sid = ARGV[4]
local policy = ARGV[5]
local identity = ARGV[7]
if redis.call('EXISTS', p .. 'server:' .. sid) == 0 then
  return {-1, 0, ''}
end
local displaced = nil
local cur = redis.call('HGET', p .. 'names', name)
if cur then
  local holder = cjson.decode(cur)
  if redis.call('EXISTS', p .. 'server:' .. holder.server_id) == 1 then
    if holder.server_id == sid and holder.connection_id == cid then
      return {1, holder.epoch, ''}
    end
    if policy == 'reject' or (policy == 'replace' and (holder.identity or '') ~= identity) then
      return {0, holder.epoch, cur}
    end
    if policy == 'replace' then
      displaced = holder
    end
  end
  redis.call('SREM', p .. 'server-names:' .. holder.server_id, name)
end
local epoch = redis.call('HINCRBY', p .. 'name-epochs', name, 1)
local holder = {server_id = sid, connection_id = cid, epoch = epoch}
if identity ~= '' then
  holder.identity = identity
end
redis.call('HSET', p .. 'names', name, cjson.encode(holder))
redis.call('SADD', p .. 'server-names:' .. sid, name)
redis.call('PEXPIRE', p .. 'server-names:' .. sid, ARGV[6])
local msg = {kind = 'name_claimed', name = name, holder = holder}
local other = ''
if displaced then
  msg.displaced = displaced
  other = cjson.encode(displaced)
end
publish(msg)
return {1, epoch, other}
"""

# ARGV: prefix, name, connection_id, epoch
_RELEASE_NAME = """
local name = ARGV[2]
local cur = redis.call('HGET', p .. 'names', name)
if not cur then
  return 0
end
local holder = cjson.decode(cur)
if holder.connection_id ~= ARGV[3] or holder.epoch ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('HDEL', p .. 'names', name)
redis.call('SREM', p .. 'server-names:' .. holder.server_id, name)
publish({kind = 'name_released', name = name, holder = holder})
return 1
"""

# ARGV: prefix. Returns {seq, {server records}, {client records}, {name, holder, ...}}.
_SNAPSHOT = """
local seq = tonumber(redis.call('GET', p .. 'seq') or '0')
local servers, clients, names, live = {}, {}, {}, {}
for _, sid in ipairs(redis.call('SMEMBERS', p .. 'servers')) do
  local record = redis.call('GET', p .. 'server:' .. sid)
  if record then
    live[sid] = true
    servers[#servers + 1] = record
    for _, client in ipairs(redis.call('HVALS', p .. 'clients:' .. sid)) do
      clients[#clients + 1] = client
    end
  end
end
local all = redis.call('HGETALL', p .. 'names')
for i = 1, #all, 2 do
  if live[cjson.decode(all[i + 1]).server_id] then
    names[#names + 1] = all[i]
    names[#names + 1] = all[i + 1]
  end
end
return {seq, servers, clients, names}
"""


class RedisDirectory(Directory):
    """A :class:`~brpc.cluster.Directory` on a Redis server, shared by servers anywhere.

    ``url`` is a redis-py URL (``redis://host:6379/0``, ``rediss://...``,
    ``unix://...``). ``timeout`` bounds each operation's connect and read, so an
    unreachable Redis raises :class:`~brpc.cluster.DirectoryUnavailable` within
    about that time (``snapshot_timeout`` for :meth:`snapshot`, whose answer
    grows with the cluster). Change feeds reconnect with exponential backoff from
    ``reconnect_initial`` to ``reconnect_max`` seconds and ping Redis every
    ``feed_ping_interval`` seconds, treating three missed answers as a lost
    connection.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = DEFAULT_TTL,
        key_prefix: str = "brpc:",
        timeout: float = 1.0,
        snapshot_timeout: float = 3.0,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
        feed_ping_interval: float = 2.0,
        max_pending: int = _DEFAULT_MAX_PENDING,
    ) -> None:
        if _aioredis is None:  # pragma: no cover - exercised only without the extra
            raise ImportError(_INSTALL_HINT)
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not 0 < reconnect_initial <= reconnect_max:
            raise ValueError("need 0 < reconnect_initial <= reconnect_max")
        self._url = url
        self._where = _describe(url)
        self._ttl = ttl
        self._ttl_ms = max(1, round(ttl * 1000))
        # The clients hash and the names set outlive the liveness key, so that the
        # reaper still finds them; they expire by themselves if nobody reaps.
        self._companion_ttl_ms = 2 * self._ttl_ms + 1000
        self._prefix = key_prefix
        self._timeout = timeout
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._feed_ping_interval = feed_ping_interval
        self._max_pending = max_pending
        self._snapshot_timeout = max(snapshot_timeout, timeout)
        self._client: Any = _aioredis.Redis.from_url(url, **self._client_options())
        self._scripts: dict[str, Any] = {
            name: self._client.register_script(_LUA_PRELUDE + source)
            for name, source in (
                ("register_server", _REGISTER_SERVER),
                ("renew_server", _RENEW_SERVER),
                ("reap", _REAP),
                ("unregister_server", _UNREGISTER_SERVER),
                ("register_client", _REGISTER_CLIENT),
                ("unregister_client", _UNREGISTER_CLIENT),
                ("claim_name", _CLAIM_NAME),
                ("release_name", _RELEASE_NAME),
                ("snapshot", _SNAPSHOT),
            )
        }
        self._feeds: set[_RedisFeed] = set()
        #: Servers this instance renews; the reaper watches the others' expiry.
        self._own: set[str] = set()
        self._reap_timer: asyncio.TimerHandle | None = None
        self._reap_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisDirectory {self._where} prefix={self._prefix!r}>"

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def channel(self) -> str:
        """The pub/sub channel changes are published on."""
        return self._prefix + "changes"

    # -- servers -------------------------------------------------------------------------

    async def register_server(self, record: ServerRecord) -> None:
        await self._run("register_server", record.server_id, record.to_json(), self._ttl_ms)
        self._own.add(record.server_id)

    async def renew_server(self, server_id: str) -> bool:
        self._own.add(server_id)
        alive, soonest = await self._run(
            "renew_server", server_id, self._ttl_ms, self._companion_ttl_ms, *self._own
        )
        self._reap_after(int(soonest))
        return int(alive) == 1

    async def unregister_server(self, server_id: str) -> None:
        await self._run("unregister_server", server_id)
        self._own.discard(server_id)

    # -- clients -------------------------------------------------------------------------

    async def register_client(self, record: ClientRecord) -> None:
        done = await self._run(
            "register_client",
            record.server_id,
            record.connection_id,
            record.to_json(),
            self._companion_ttl_ms,
        )
        if int(done) != 1:
            raise ServerNotRegistered(record.server_id)

    async def unregister_client(self, server_id: str, connection_id: str) -> None:
        await self._run("unregister_client", server_id, connection_id)

    # -- names ---------------------------------------------------------------------------

    async def claim_name(
        self,
        name: str,
        connection_id: str,
        server_id: str,
        *,
        policy: DuplicateNames = DuplicateNames.REPLACE,
        identity: str | None = None,
    ) -> NameClaim:
        if not name:
            raise ValueError("an empty name cannot be claimed")
        if identity == "":
            raise ValueError("identity must be None or a non-empty string")
        status, epoch, other = await self._run(
            "claim_name",
            name,
            connection_id,
            server_id,
            policy.value,
            self._companion_ttl_ms,
            identity or "",
        )
        status = int(status)
        if status < 0:
            raise ServerNotRegistered(server_id)
        other_holder = _holder(json.loads(other)) if other else None
        if status == 0:
            return NameClaim(name=name, claimed=False, epoch=int(epoch), holder=other_holder)
        return NameClaim(name=name, claimed=True, epoch=int(epoch), displaced=other_holder)

    async def release_name(self, name: str, connection_id: str, epoch: int) -> bool:
        released = await self._run("release_name", name, connection_id, epoch)
        return int(released) == 1

    # -- reading -------------------------------------------------------------------------

    async def snapshot(self) -> DirectorySnapshot:
        sequence, servers, clients, names = await self._run("snapshot")
        server_records = (ServerRecord.from_json(text) for text in servers)
        client_records = (ClientRecord.from_json(text) for text in clients)
        return DirectorySnapshot(
            sequence=int(sequence),
            servers={record.server_id: record for record in server_records},
            clients={record.connection_id: record for record in client_records},
            names={
                names[index]: _holder(json.loads(names[index + 1]))
                for index in range(0, len(names), 2)
            },
        )

    def changes(self) -> ChangeFeed:
        if self._closed:
            raise DirectoryUnavailable("the directory is closed")
        feed = _RedisFeed(self)
        self._feeds.add(feed)
        return feed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_timer = None
        for task in list(self._reap_tasks):
            task.cancel()
        for feed in list(self._feeds):
            await feed.aclose()
        if self._reap_tasks:
            await asyncio.gather(*self._reap_tasks, return_exceptions=True)
        await self._client.aclose()

    # -- internals -----------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        # No socket_timeout: with one, redis-py writes through asyncio.wait_for, which
        # on Python 3.11 can swallow the caller's cancellation. Operations are bounded
        # by asyncio.timeout in _run instead.
        return {
            "socket_timeout": None,
            "socket_connect_timeout": self._timeout,
            "retry": _Retry(_NoBackoff(), 0),
            "decode_responses": True,
        }

    async def _run(self, script: str, *args: object) -> Any:
        if self._closed:
            raise DirectoryUnavailable("the directory is closed")
        timeout = self._snapshot_timeout if script == "snapshot" else self._timeout
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            async with asyncio.timeout(timeout):
                result = await self._scripts[script](keys=[], args=[self._prefix, *args])
        except TimeoutError as exc:
            raise DirectoryUnavailable(
                f"Redis at {self._where} did not answer within {timeout} s"
            ) from exc
        except (_redis_errors.RedisError, OSError) as exc:
            raise DirectoryUnavailable(f"Redis at {self._where}: {exc}") from exc
        if task is not None and task.cancelling() > cancelling:
            # A cancellation arrived and something below lost it: honour it.
            raise asyncio.CancelledError
        return result

    def _forget(self, feed: _RedisFeed) -> None:
        self._feeds.discard(feed)

    def _reap_after(self, milliseconds: int) -> None:
        """Look for lapsed servers again when the next other server's liveness expires.

        So a dead server is dropped (and SERVER_DOWN published) right after its TTL,
        not up to a renewal interval later.
        """
        if milliseconds < 0 or self._closed:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + milliseconds / 1000 + 0.005
        timer = self._reap_timer
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._reap_timer = loop.call_at(when, self._start_reap)

    def _start_reap(self) -> None:
        self._reap_timer = None
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._reap(), name="brpc-directory-reap")
        self._reap_tasks.add(task)
        task.add_done_callback(self._reap_tasks.discard)

    async def _reap(self) -> None:
        try:
            soonest = await self._run("reap", *self._own)
        except DirectoryUnavailable as exc:
            log.debug("reaping lapsed servers: %s", exc)
            return
        self._reap_after(int(soonest))


def _describe(url: str) -> str:
    """The URL's host and port (or socket path), without credentials, for messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 6379}"


def _holder(data: Any) -> NameHolder:
    identity = data.get("identity")
    return NameHolder(
        server_id=str(data["server_id"]),
        connection_id=str(data["connection_id"]),
        epoch=int(data["epoch"]),
        identity=None if identity is None else str(identity),
    )


def _parse_change(text: str | bytes) -> Change:
    """Decode one message of the change channel."""
    data = json.loads(text)
    kind = ChangeKind(data["kind"])
    server = data.get("server")
    client = data.get("client")
    holder = data.get("holder")
    displaced = data.get("displaced")
    return Change(
        kind=kind,
        sequence=int(data["seq"]),
        server_id=str(data.get("server_id") or ""),
        server=ServerRecord.from_json(server) if server else None,
        connection_id=str(data.get("connection_id") or ""),
        client=ClientRecord.from_json(client) if client else None,
        name=str(data.get("name") or ""),
        holder=_holder(holder) if holder else None,
        displaced=_holder(displaced) if displaced else None,
    )


class _RedisFeed(ChangeFeed):
    """One pub/sub subscription, kept up by a task that reconnects with backoff."""

    def __init__(self, directory: RedisDirectory) -> None:
        self._directory = directory
        self._pending: deque[Change] = deque()
        self._wakeup = asyncio.Event()
        self._ended = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"brpc-directory-feed-{directory.channel}"
        )

    async def __anext__(self) -> Change:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._pending.popleft()

    async def aclose(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._pending.clear()
        self._wakeup.set()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        self._directory._forget(self)

    def _push(self, change: Change) -> None:
        if len(self._pending) >= self._directory._max_pending:
            self._pending.clear()
            change = Change(kind=ChangeKind.RESYNC)
        self._pending.append(change)
        self._wakeup.set()

    async def _run(self) -> None:
        directory = self._directory
        delay = directory._reconnect_initial
        lost = False
        while not self._ended:
            # A client of its own: reads block for as long as the channel is quiet.
            client: Any = _aioredis.Redis.from_url(directory._url, **directory._client_options())
            pubsub: Any = client.pubsub()
            try:
                await self._subscribe(pubsub)
                lost = False
                delay = directory._reconnect_initial
                self._push(Change(kind=ChangeKind.RESYNC))
                await self._receive(pubsub)
            except (_redis_errors.RedisError, OSError) as exc:
                if not lost:
                    lost = True
                    detail = f"Redis at {directory._where}: {exc}"
                    log.warning("directory change feed lost Redis: %s", detail)
                    self._push(Change(kind=ChangeKind.UNAVAILABLE, detail=detail))
            except (ValueError, KeyError, TypeError) as exc:
                # A message this code cannot read: start over from a snapshot.
                log.error("unreadable directory change, resynchronising: %s", exc)
            finally:
                await _close_quietly(pubsub, client)
            if self._ended:
                break
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, directory._reconnect_max)

    async def _subscribe(self, pubsub: Any) -> None:
        directory = self._directory
        async with asyncio.timeout(directory._timeout):
            await pubsub.subscribe(directory.channel)
            while True:
                message = await pubsub.get_message(timeout=directory._timeout)
                if message is not None and message.get("type") == "subscribe":
                    return

    async def _receive(self, pubsub: Any) -> None:
        directory = self._directory
        interval = directory._feed_ping_interval
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        next_ping = last_heard + interval
        while not self._ended:
            message = await pubsub.get_message(timeout=min(interval, 1.0))
            now = loop.time()
            if message is not None:
                last_heard = now
                if message.get("type") == "message":
                    self._push(_parse_change(message["data"]))
                continue
            if now - last_heard > 3 * interval:
                raise _redis_errors.TimeoutError(f"no answer for {now - last_heard:.1f} s")
            if now >= next_ping:
                next_ping = now + interval
                await pubsub.ping()


async def _close_quietly(pubsub: Any, client: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:
        log.debug("closing a pub/sub connection failed", exc_info=True)
    try:
        await client.aclose()
    except Exception:
        log.debug("closing a Redis client failed", exc_info=True)
