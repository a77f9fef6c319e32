"""The trio-driven paho session against a real Mosquitto (no gateway involved)."""

from __future__ import annotations

import logging

import pytest
import trio

from gatewayd_mqtt.session import ConnectRefused, MqttError, Session, SessionOptions

log = logging.getLogger("test.mqtt")


def opts(port, **kw) -> SessionOptions:
    kw.setdefault("client_id", "t-session")
    return SessionOptions(host="127.0.0.1", port=port, **kw)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_and_ack(broker, subscriber_factory, protocol, qos):
    sub = subscriber_factory(broker.port, "t/#", qos=2)
    acked: list[int] = []
    done = trio.Event()
    n = 2000

    def on_publish(mid):
        acked.append(mid)
        if len(acked) == n:
            done.set()

    s = Session(opts(broker.port, protocol=protocol), on_publish=on_publish if qos else None, log=log)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        mids = [s.publish(f"t/{i % 7}", b"%d" % i, qos) for i in range(n)]
        s.kick()
        if qos:
            with trio.fail_after(10):
                await done.wait()
            assert sorted(acked) == sorted(mids)
        else:
            drained = trio.Event()
            s.when_drained(drained.set)
            with trio.fail_after(10):
                await drained.wait()
        msgs = await sub.wait_count(n)
        await s.goodbye()
    per_topic: dict[str, list[int]] = {}
    for t, p, _r, _q in msgs:
        per_topic.setdefault(t, []).append(int(p))
    for t, vals in per_topic.items():
        assert vals == sorted(vals), f"out of order on {t}"
    assert sum(len(v) for v in per_topic.values()) == n


async def test_connection_refused_port(tmp_path):
    import socket

    with socket.socket() as sk:  # a port nobody listens on (`conftest` is ambiguous across test dirs)
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    s = Session(opts(port, connect_timeout=2), log=log)
    with pytest.raises(MqttError, match="cannot connect to 127.0.0.1"):
        await s.run()


async def test_auth_failure_is_clear(broker_factory):
    b = broker_factory(users={"gw": "right"})
    for protocol in ("3.1.1", "5"):
        s = Session(opts(b.port, username="gw", password="wrong", protocol=protocol), log=log)
        with pytest.raises(ConnectRefused) as ei:
            await s.run()
        msg = str(ei.value).lower()
        assert "refused" in msg and ("not authorized" in msg or "bad user name or password" in msg), msg
    ok = Session(opts(b.port, username="gw", password="right"), log=log)
    async with trio.open_nursery() as nursery:
        await nursery.start(ok.run)
        await ok.goodbye()


async def test_broker_stop_is_noticed(broker):
    s = Session(opts(broker.port, keepalive=5), log=log)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        broker.stop()
        with trio.fail_after(5):
            await s.lost.wait()
    assert s.error


def _publish_packet(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


async def test_tls_packets_buffered_in_ssl_object(tmp_path):
    """CONNACK and 20 PUBLISHes in ONE TLS record: after paho has read the CONNACK, the
    PUBLISHes sit decrypted inside the SSL object; the kernel buffer is empty, so only
    ``pending()`` tells the reader to go on."""
    import socket
    import ssl
    import threading

    from test_tls import make_pki

    d = tmp_path / "pki"
    d.mkdir()
    pki = make_pki(d)
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(*pki["server"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    release = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with srv_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)  # CONNECT
            burst = b"\x20\x02\x00\x00" + b"".join(_publish_packet(b"t/x", b"%d" % i) for i in range(20))
            tls.sendall(burst)  # one write -> one TLS record
            release.wait(10)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    got: list[bytes] = []
    twenty = trio.Event()

    def on_message(msg):
        got.append(msg.payload)
        if len(got) == 20:
            twenty.set()

    ctx = ssl.create_default_context(cafile=pki["ca"])
    s = Session(opts(port, ssl_context=ctx, keepalive=60), on_message=on_message, log=log)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(s.run)
            with trio.fail_after(3):
                await twenty.wait()
            nursery.cancel_scope.cancel()
    finally:
        release.set()
        th.join(5)
        listener.close()
    assert got == [b"%d" % i for i in range(20)]


# ------------------------------------------------------------------ why a connection ended (issue 12.16)

async def _fake_broker_ends(end: str, protocol: str = "3.1.1") -> str:
    """A minimal broker on a real socket (not Mosquitto, which cannot be made to do these):
    accepts the CONNECT, answers CONNACK, then ends the connection by ``end``: "rst" (an
    abortive close, SO_LINGER 0) or "disconnect" (an MQTT 5 DISCONNECT, reason 0x8B)."""
    import socket
    import struct

    srv = trio.socket.socket()
    await srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    go = trio.Event()

    async def fake_broker():
        conn, _ = await srv.accept()
        with conn:
            await conn.recv(1024)  # CONNECT
            await conn.send(b"\x20\x03\x00\x00\x00" if protocol == "5" else b"\x20\x02\x00\x00")  # CONNACK, accepted
            await go.wait()
            if end == "rst":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                await conn.send(b"\xe0\x02\x8b\x00")  # DISCONNECT, 0x8B Server shutting down

    s = Session(opts(port, protocol=protocol), log=log)
    with srv:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_broker)
            await nursery.start(s.run)
            go.set()
            with trio.fail_after(10):
                await s.lost.wait()
    return s.error or ""


async def test_a_reset_connection_is_called_a_reset():
    why = await _fake_broker_ends("rst")
    assert why.startswith("connection reset"), why


async def test_a_disconnect_from_the_broker_gives_its_reason():
    why = await _fake_broker_ends("disconnect", protocol="5")
    assert why == "the broker closed the connection: Server shutting down", why
