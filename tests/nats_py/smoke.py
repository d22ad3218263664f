"""Herald's NATS listener with nats-py, the official Python client.

Starts the herald binary given as the first argument in development mode
on ephemeral ports, then checks the basics a Python backend relies on:
publish/subscribe with wildcards, headers, queue groups, request/reply,
auto-unsubscribe, that an HTTP publish reaches a NATS subscriber, and
that a publisher over its rate is slowed, not closed.
Then, on servers with an eight-message queue, a subscriber that stops
reading: under `drop-oldest` it stays connected and gets what comes
after; under `disconnect` it reconnects. And on a clustered node cut off
from NATS, publishes that are refused leave the client connected.
(nats-py closes for good on an `-ERR` it does not know, so none of these
may send one.)
Exits non-zero on the first failure.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager

import nats


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def expect(subscription, count, timeout=5):
    return [await subscription.next_msg(timeout=timeout) for _ in range(count)]


async def check(nats_url, http_url):
    nc = await nats.connect(nats_url, allow_reconnect=False)

    # Wildcards, once per subscription.
    star = await nc.subscribe("orders.*")
    tail = await nc.subscribe("orders.>")
    await nc.publish("orders.new", b"\x00bytes\xff")
    await nc.publish("orders.eu.new", b"deep")
    await nc.flush()
    assert (await star.next_msg(timeout=5)).data == b"\x00bytes\xff"
    got = [m.data for m in await expect(tail, 2)]
    assert got == [b"\x00bytes\xff", b"deep"], got

    # Headers.
    traced = await nc.subscribe("trace.hop")
    await nc.publish("trace.hop", b"{}", headers={"Trace-Id": "abc"})
    message = await traced.next_msg(timeout=5)
    assert message.headers and message.headers.get("Trace-Id") == "abc", message.headers

    # A queue group: each message to one member.
    members = [await nc.subscribe("jobs.*", queue="workers") for _ in range(3)]
    await nc.flush()
    for n in range(30):
        await nc.publish("jobs.resize", str(n).encode())
    await nc.flush()
    seen = []
    for member in members:
        while True:
            try:
                seen.append(int((await member.next_msg(timeout=0.3)).data))
            except nats.errors.TimeoutError:
                break
    assert sorted(seen) == list(range(30)), seen

    # Request/reply through an inbox.
    async def answer(message):
        await nc.publish(message.reply, b"noon")

    await nc.subscribe("svc.time", cb=answer)
    reply = await nc.request("svc.time", b"now?", timeout=5)
    assert reply.data == b"noon", reply.data

    # Auto-unsubscribe after three messages.
    limited = await nc.subscribe("count", max_msgs=3)
    for n in range(5):
        await nc.publish("count", str(n).encode())
    await nc.flush()
    got = [m.data for m in await expect(limited, 3)]
    assert got == [b"0", b"1", b"2"], got
    try:
        extra = await limited.next_msg(timeout=0.3)
        raise AssertionError(f"a fourth message arrived: {extra.data!r}")
    except (nats.errors.TimeoutError, nats.errors.BadSubscriptionError):
        pass

    # The HTTP API and NATS are one broker.
    news = await nc.subscribe("news.today")
    # nats-py writes a flush's PING straight to the socket, ahead of the
    # SUB still in its pending buffer: the first PONG can come back before
    # the server has read the SUB. The second PING goes out after it, so
    # its PONG means the subscription holds before the message below is
    # published over HTTP (outside this connection's order).
    await nc.flush()
    await nc.flush()
    request = urllib.request.Request(
        f"{http_url}/v1/publish",
        data=json.dumps({"subject": "news.today", "data": {"headline": "hi"}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    message = await news.next_msg(timeout=5)
    assert json.loads(message.data) == {"headline": "hi"}, message.data

    # Over its publish rate (an anonymous connection: 50 a second) a
    # publisher is read more slowly, not refused: all 80 arrive, in order,
    # and the connection stays open.
    paced = await nc.subscribe("paced")
    await nc.flush()
    started = time.monotonic()
    for n in range(80):
        await nc.publish("paced", str(n).encode())
    await nc.flush(timeout=10)
    got = [int(m.data) for m in await expect(paced, 80)]
    assert got == list(range(80)), got
    assert time.monotonic() - started >= 0.4, "the publishes over the rate were held back"
    assert nc.is_connected

    await nc.drain()


# A backend's key with a command rate of its own: an anonymous connection
# may publish 50 messages a second.
PUBLISHER_KEY = "smoke-publisher-key-0123456789abcdef"
PUBLISHER_KEYS = (
    f'[{{key="{PUBLISHER_KEY}", publish=["flood"], subscribe=[">"], max_commands_per_second=1000000}}]'
)


def flood(nats_port, subject, count, size):
    """Publishes from a plain socket (a thread, while the event loop under
    test is blocked): `count` messages of `size` bytes, then waits for the
    server's PONG."""
    with socket.create_connection(("127.0.0.1", nats_port)) as raw:
        raw.recv(4096)  # INFO
        payload = b"x" * size
        message = f"PUB {subject} {size}\r\n".encode() + payload + b"\r\n"
        connect = json.dumps({"verbose": False, "auth_token": PUBLISHER_KEY}).encode()
        raw.sendall(b"CONNECT " + connect + b"\r\n" + message * count + b"PING\r\n")
        answer = b""
        while b"PONG" not in answer:
            chunk = raw.recv(4096)
            assert chunk, "the publisher was closed"
            answer += chunk
        assert b"-ERR" not in answer, answer[:200]


async def check_slow_consumer(nats_url, nats_port, policy):
    events = {"closed": asyncio.Event(), "reconnected": asyncio.Event()}

    async def closed():
        events["closed"].set()

    async def reconnected():
        events["reconnected"].set()

    async def error(_error):
        pass

    nc = await nats.connect(
        nats_url,
        allow_reconnect=(policy == "disconnect"),
        reconnect_time_wait=0.1,
        closed_cb=closed,
        reconnected_cb=reconnected,
        error_cb=error,
    )
    flooded = await nc.subscribe("flood")
    await nc.flush()
    await nc.flush()
    # 40 MB while this client reads nothing (its event loop is blocked):
    # more than the socket buffers hold, so its server queue overflows.
    publisher = threading.Thread(target=flood, args=(nats_port, "flood", 5000, 8192))
    publisher.start()
    time.sleep(2)
    publisher.join(timeout=30)
    assert not publisher.is_alive(), "the flood was taken"
    if policy == "disconnect":
        await asyncio.wait_for(events["reconnected"].wait(), timeout=10)
        await nc.flush()
    threading.Thread(target=flood, args=(nats_port, "flood", 1, 4)).run()
    while True:
        message = await flooded.next_msg(timeout=10)
        if len(message.data) == 4:
            break
    assert nc.is_connected and not events["closed"].is_set(), policy
    if policy == "drop-oldest":
        assert not events["reconnected"].is_set(), "never disconnected"
    await nc.close()


async def check_cluster_outage(nats_url):
    """A clustered node cut off from NATS takes no publish; nats-py must
    not hear of it, or it closes for good."""
    closed = asyncio.Event()

    async def on_closed():
        closed.set()

    async def error(_error):
        pass

    nc = await nats.connect(nats_url, allow_reconnect=False, closed_cb=on_closed, error_cb=error)
    for n in range(3):
        await nc.publish("outage.x", str(n).encode())
    await nc.flush()
    await nc.flush()
    await asyncio.sleep(0.3)
    assert nc.is_connected and not closed.is_set(), "closed by a refused publish"
    await nc.close()


@contextmanager
def herald_server(herald, **settings):
    """Herald in development mode on ephemeral ports, `settings` as
    environment variables; yields (NATS port, HTTP URL)."""
    nats_port = free_port()
    env = dict(os.environ, HERALD_NATS__LISTEN=f"127.0.0.1:{nats_port}", HERALD_QUIC__LISTEN="127.0.0.1:0", RUST_LOG="info")
    env.update(settings)
    server = subprocess.Popen(
        [herald, "serve", "--dev", "--listen", "127.0.0.1:0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        http_url = None
        for line in server.stderr:
            if "address=" in line and http_url is None:
                http_url = "http://" + line.split("address=")[1].split()[0]
            if "listening for NATS clients" in line:
                break
        else:
            raise SystemExit("herald exited before listening")
        # Keep reading its log, or a full pipe would block the server.
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        yield nats_port, http_url
    finally:
        server.terminate()
        server.wait(timeout=10)


def main():
    herald = sys.argv[1]
    with herald_server(herald) as (nats_port, http_url):
        asyncio.run(check(f"nats://127.0.0.1:{nats_port}", http_url))
    for policy in ["drop-oldest", "disconnect"]:
        settings = {
            "HERALD_BROKER__QUEUE__MAX_MESSAGES": "8",
            "HERALD_BROKER__OVERFLOW_POLICY": policy,
            "HERALD_AUTH__API_KEYS": PUBLISHER_KEYS,
        }
        with herald_server(herald, **settings) as (nats_port, _):
            asyncio.run(check_slow_consumer(f"nats://127.0.0.1:{nats_port}", nats_port, policy))
    # The cluster's NATS is nowhere: every publish is refused.
    with herald_server(herald, HERALD_CLUSTER__NATS_URL=f"nats://127.0.0.1:{free_port()}") as (nats_port, _):
        asyncio.run(check_cluster_outage(f"nats://127.0.0.1:{nats_port}"))
    print("nats-py: every check passed")


if __name__ == "__main__":
    main()
