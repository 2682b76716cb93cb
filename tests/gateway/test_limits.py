"""Socket limits: an oversize frame or a device that does not read closes that socket and nothing else."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from websockets.exceptions import ConnectionClosed

from libs.events.schemas.gateway import AgentDisconnected
from services.gateway.domain import OpenCommand
from services.gateway.handlers import Connection

from .conftest import World, connect, recv, recv_until, send, served

PROTO = "fleet.agent.v1"


async def _oversize_closes_only_that_socket(world: World) -> None:
    a, wsid, token_a = world.session()
    _b, _w, token_b = world.session(ws=wsid)
    w_device, _wsid, w_token = await world.w_device()
    async with (
        connect(world.url("/api/v1/device/ws"), additional_headers={"X-Device-Session": token_a}) as big,
        connect(world.url("/api/v1/agent/ws"), subprotocols=[PROTO, f"auth.{token_b}"]) as other,
        connect(world.url(f"/ws/device/{w_token}"), max_size=None) as third,
    ):
        await recv(big)
        await send(other, type="hello", boot="b1")
        await recv_until(other, "welcome")
        await big.send(json.dumps({"type": "heartbeat", "pad": "x" * 70_000}))
        with pytest.raises(ConnectionClosed):
            await recv(big)
        assert big.close_code == 1009
        await send(other, type="heartbeat", seq=1, sent_at=datetime.now(UTC).isoformat())
        assert (await recv_until(other, "heartbeat_ack"))["seq"] == 1
        await send(third, type="ping")
        assert await recv(third) == {"type": "pong"}
    gone = await world.until(lambda ev: [e for e in ev if isinstance(e, AgentDisconnected)][2:] and ev)
    reasons = {e.device_id: e.reason for e in gone if isinstance(e, AgentDisconnected)}
    assert reasons[a] == "socket_closed" and w_device in reasons


async def test_oversize_frame_refused_by_the_protocol_layer(world: World):
    """uvicorn's ``ws_max_size`` (from GATEWAY_MAX_FRAME_BYTES) refuses the frame while it is read."""
    await _oversize_closes_only_that_socket(world)


async def test_oversize_frame_refused_by_the_app(database_url, prefix):
    """Under a server with a larger protocol limit (``fleet up``), the app's own check closes it."""
    async with served(database_url, prefix, server={"ws_max_size": 16 * 1024 * 1024}) as world:
        await _oversize_closes_only_that_socket(world)


def _command(n: int) -> OpenCommand:
    now = datetime.now(UTC)
    return OpenCommand(f"c{n}", "d", "w", "t", {}, now, now + timedelta(minutes=5), n)


async def test_a_device_that_does_not_read_is_closed_1013_and_nothing_waits():
    stuck = asyncio.Event()
    sent: list[str] = []
    closed: list[int] = []

    async def send_(text: str) -> None:
        sent.append(text)
        await stuck.wait()  # the device's TCP window is full: a write never completes

    async def close(code: int, _reason: str) -> None:
        closed.append(code)

    gateway = SimpleNamespace(settings=SimpleNamespace(send_queue=3))
    conn = Connection(
        gateway,  # type: ignore[arg-type]
        device_id="d",
        workspace_id="w",
        dialect="w",
        render=lambda cmd, attempt: cmd.command_id,
        send=send_,
        close=close,
    )
    now = datetime.now(UTC)
    for n in range(10):
        conn.push(_command(n), now)  # never blocks the caller (the command feed)
    await asyncio.sleep(0.05)
    assert closed == [1013] and conn.close_code == 1013
    assert sent == ["c0"] and conn.offer("late") is False
    await asyncio.wait_for(conn.finish(), 1)


async def test_expired_commands_are_never_pushed():
    conn = Connection(
        SimpleNamespace(settings=SimpleNamespace(send_queue=3)),  # type: ignore[arg-type]
        device_id="d",
        workspace_id="w",
        dialect="agent",
        render=lambda cmd, attempt: cmd.command_id,
        send=lambda text: asyncio.sleep(0),
        close=lambda code, reason: asyncio.sleep(0),
    )
    cmd = _command(1)
    conn.push(cmd, cmd.expires_at + timedelta(seconds=1))
    assert conn.queued == 0 and cmd.attempts == 0


async def test_connections_gauge_counts_open_sockets_per_dialect(world: World):
    from services.gateway.handlers import _observe, gateway_of

    def observed() -> dict[str, int]:
        return {o.attributes["dialect"]: o.value for o in _observe(None)}  # type: ignore[arg-type,index]

    _d, _w, token = world.session()
    _wd, _ww, w_token = await world.w_device()
    async with (
        connect(world.url("/api/v1/device/ws"), additional_headers={"X-Device-Session": token}) as s,
        connect(world.url(f"/ws/device/{w_token}")) as w,
    ):
        await recv(s)
        await send(w, type="ping")
        await recv(w)
        assert gateway_of(world.host).counts() == {"s": 1, "w": 1}
        assert observed()["s"] >= 1 and observed()["w"] >= 1
    await world.until(lambda ev: [e for e in ev if isinstance(e, AgentDisconnected)][1:])
    assert gateway_of(world.host).counts() == {}


async def test_revocation_closes_open_sockets(world: World):
    from libs.events.identity import Signer
    from libs.events.publisher import Publisher
    from libs.events.schemas.auth import CredentialRevoked
    from libs.events.schemas.device import DeviceDeleted

    device_id, wsid, token = world.session()
    cid = Signer("x" * 40).verify(token, now=datetime.now(UTC).timestamp()).cid
    w_device, w_ws, w_token = await world.w_device()
    async with (
        connect(world.url("/api/v1/device/ws"), additional_headers={"X-Device-Session": token}) as s,
        connect(world.url(f"/ws/device/{w_token}")) as w,
    ):
        await recv(s)
        await send(w, type="ping")
        await recv(w)
        revoked = CredentialRevoked(credential_id=cid, device_id=device_id, workspace_id=wsid, kind="secret")
        await Publisher(world.redis, producer="auth").publish(world.prefix + "events:auth", revoked)
        deleted = DeviceDeleted(device_id=w_device, workspace_id=w_ws)
        await Publisher(world.redis, producer="device").publish(world.prefix + "events:device", deleted)
        for ws in (s, w):
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1008


def _waiting_reader() -> tuple[Connection, asyncio.Task[object]]:
    """A connection whose endpoint waits for a frame that never comes."""
    from services.gateway.ws.common import Socket

    conn = Connection(
        SimpleNamespace(settings=SimpleNamespace(send_queue=3)),  # type: ignore[arg-type]
        device_id="d",
        workspace_id="w",
        dialect="agent",
        render=lambda cmd, attempt: cmd.command_id,
        send=lambda text: asyncio.sleep(0),
        close=lambda code, reason: asyncio.sleep(0),
    )
    never = SimpleNamespace(receive=lambda: asyncio.get_running_loop().create_future())
    return conn, asyncio.create_task(Socket.receive(never, conn))  # type: ignore[arg-type]


async def test_an_abort_ends_the_wait_for_a_frame():
    conn, reader = _waiting_reader()
    await asyncio.sleep(0)
    conn.abort(1013, "send queue full")
    assert await asyncio.wait_for(reader, 1) is None
    await conn.finish()


async def test_an_abort_never_swallows_someone_elses_cancellation():
    """An abort and a timeout (or shutdown) in the same loop turn: the outside cancel still arrives."""
    conn, reader = _waiting_reader()
    await asyncio.sleep(0)
    conn.abort(1013, "send queue full")
    reader.cancel()  # e.g. the hello deadline, in the same iteration
    with pytest.raises(asyncio.CancelledError):
        await reader
    # only the outside request is left counted: asyncio.timeout() (Python 3.12+ runs the hello
    # deadline in this very task) turns exactly that one into TimeoutError
    assert reader.cancelling() == 1
    await conn.finish()
