"""The identity feed: every instance sees revocations within a read; misses catch up at once."""

from __future__ import annotations

import asyncio
import time

from libs.events.identity import new_secret, secret_hash
from libs.events.identity_feed import IdentityFeed
from libs.events.publisher import Publisher
from libs.events.schemas import auth as A
from libs.events.schemas import device as D

from .helpers import eventually


async def test_revocation_reaches_every_feed_within_a_second(r, prefix):
    streams = [f"{prefix}events:auth", f"{prefix}events:device"]
    pub = Publisher(r, producer="test")
    secret = new_secret()
    await pub.publish(
        streams[1],
        D.DeviceRegistered(
            device_id="d1",
            workspace_id="w1",
            name="n",
            device_type="virtual",
            credentials=[
                D.InitialCredential(credential_id="c1", kind="api_key", secret_sha256=secret_hash(secret))
            ],
        ),
    )
    feeds = [IdentityFeed(r, streams, block_ms=200) for _ in range(3)]
    stop = asyncio.Event()
    for f in feeds:
        await f.load()
        assert f.index.credential(secret, "api_key", "d1") is not None
    tasks = [asyncio.create_task(f.run(stop)) for f in feeds]
    try:
        started = time.monotonic()
        await pub.publish(
            streams[0],
            A.CredentialRevoked(credential_id="c1", device_id="d1", workspace_id="w1", kind="api_key"),
        )
        await eventually(lambda: all(f.index.credential(secret, "api_key") is None for f in feeds), 1.0)
        assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_miss_catches_up_without_waiting_for_the_follower(r, prefix):
    streams = [f"{prefix}events:auth", f"{prefix}events:device"]
    feed = IdentityFeed(r, streams, block_ms=60_000)
    await feed.load()
    pub = Publisher(r, producer="test")
    secret = new_secret()
    await pub.publish(
        streams[0],
        A.CredentialIssued(
            credential_id="c9",
            device_id="d9",
            workspace_id="w",
            kind="token",
            secret_sha256=secret_hash(secret),
        ),
    )
    assert feed.index.credential(secret, "token") is None  # nobody is following
    await asyncio.gather(*(feed.catch_up() for _ in range(5)))  # concurrent callers share one read
    assert feed.index.credential(secret, "token") is not None


async def test_follower_and_catch_up_reading_together_apply_each_entry_once_in_order(r, prefix):
    streams = [f"{prefix}events:auth", f"{prefix}events:device"]
    feed = IdentityFeed(r, streams, block_ms=50)
    await feed.load()
    stop = asyncio.Event()
    follower = asyncio.create_task(feed.run(stop))
    pub = Publisher(r, producer="test")
    try:
        for i in range(30):  # toggles interleaved with catch-ups racing the follower
            await pub.publish(
                streams[0], A.WorkspaceUpdated(workspace_id="w", changes={"open_enrolment": i % 2 == 0})
            )
            await asyncio.gather(feed.catch_up(), feed.catch_up())
        await eventually(lambda: feed.index.applied == 30)
        assert feed.index.open_enrolment == {"w": False}  # the last toggle (i = 29) wins
    finally:
        stop.set()
        await follower
