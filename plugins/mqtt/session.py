"""One MQTT connection: paho-mqtt's protocol engine driven by trio, no paho thread.

paho 2.x offers an "external loop" API (``loop_read``/``loop_write``/
``loop_misc``/``want_write``); :class:`Session` drives it from three trio
tasks:

* **reader**: ``trio.lowlevel.wait_readable(sock)`` then ``loop_read()``; with
  TLS it keeps reading while ``sock.pending()`` says decrypted bytes sit in the
  SSL object (``wait_readable`` cannot see those: the kernel buffer is empty);
* **writer**: sleeps until something is queued (``kick()``), then
  ``wait_writable`` + ``loop_write()`` until paho's queue is empty;
* **misc**: ``loop_misc()`` once a second (keepalive PINGREQ, ping timeout).

The TCP connection and the TLS handshake are made here, non-blocking and
cancellable, and handed to paho through :class:`_Client` (paho's own
``connect()`` would block in ``socket.create_connection``/``do_handshake``).
paho then only writes CONNECT on a socket that is already open.

paho may close the socket inside ``loop_read``/``loop_write``/``loop_misc``
(connection lost, ping timeout, DISCONNECT written); its ``on_socket_close``
callback calls ``trio.lowlevel.notify_closing`` first, so a task parked in
``wait_readable``/``wait_writable`` wakes with ``ClosedResourceError`` instead
of waiting on a dead (or reused) descriptor. The socket is always closed by
us before the client object is dropped, so paho's ``__del__`` never runs
callbacks outside trio.

Every paho call and callback happens on the trio thread; callbacks only
update plain state and set ``trio.Event``s.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from typing import Any, Callable

import trio
from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = ["Session", "SessionOptions", "MqttError", "ConnectRefused", "ConnectFailed", "ConnectionLost",
           "open_socket", "port_answers", "describe_socket_error"]


class MqttError(Exception):
    """A connection could not be made or was lost; the message is shown in ``connectors.status``."""


class ConnectRefused(MqttError):
    """The broker answered CONNACK with a failure (bad credentials, not authorized ...)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionLost(MqttError):
    pass


class ConnectFailed(MqttError):
    """The broker's port did not answer (refused, unreachable, timed out): the broker is down or away."""


def describe_socket_error(e: BaseException) -> str:
    """What a socket error means for an MQTT connection, in words an operator can act on."""
    if isinstance(e, ssl.SSLError):
        reason = getattr(e, "reason", None) or str(e)
        if isinstance(e, ssl.SSLZeroReturnError):
            return "the broker closed the TLS connection"
        if "ALERT" in str(reason).upper():
            return f"TLS alert from the broker: {reason}"
        return f"TLS error: {reason}"
    if isinstance(e, ConnectionResetError):
        return "connection reset by the broker (or a device in between)"
    if isinstance(e, BrokenPipeError):
        return "the broker closed the connection (broken pipe while sending)"
    if isinstance(e, ConnectionAbortedError):
        return "connection aborted by the local network stack"
    if isinstance(e, TimeoutError) or getattr(e, "errno", None) == errno.ETIMEDOUT:
        return "connection timed out (the broker or the network path stopped answering)"
    if getattr(e, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN):
        return f"network unreachable: {e.strerror}"
    return f"connection lost: {getattr(e, 'strerror', None) or e}"


class SessionOptions:
    """Everything needed to open one connection (built by the connector from its settings)."""

    def __init__(self, *, host: str, port: int, client_id: str, protocol: str = "3.1.1", keepalive: int = 60,
                 connect_timeout: float = 10.0, clean: bool = True, session_expiry: int = 0,
                 username: str | None = None, password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, will: tuple[str, bytes, int, bool] | None = None,
                 max_inflight: int = 1000) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.protocol = protocol
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.clean = clean
        self.session_expiry = session_expiry
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.will = will
        self.max_inflight = max_inflight

    @property
    def v5(self) -> bool:
        return self.protocol == "5"


async def _tcp_connect(host: str, port: int) -> socket.socket:
    """A connected, non-blocking stdlib socket (tries every resolved address)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise MqttError(f"cannot resolve {host!r}")
    last: Exception | None = None
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"{errno.errorcode.get(err, err)}: {addr}")
            if err:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"{errno.errorcode.get(err, err)} ({addr[0]}:{addr[1]})")
            return sock
        except BaseException as e:
            sock.close()
            if not isinstance(e, OSError):
                raise
            last = e
    raise ConnectFailed(f"cannot connect to {host}:{port}: {getattr(last, 'strerror', None) or last}")


async def _tls_handshake(sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None) -> ssl.SSLSocket:
    tls = ctx.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=False)
    try:
        tls.setblocking(False)
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(tls)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(tls)
    except ssl.SSLCertVerificationError as e:
        tls.close()
        raise MqttError(f"TLS certificate verification failed: {e.verify_message or e.reason}") from None
    except ssl.SSLError as e:
        tls.close()
        raise MqttError(f"TLS handshake failed: {e.reason or e}") from None
    except BaseException:
        tls.close()
        raise


async def open_socket(opts: SessionOptions) -> socket.socket:
    """TCP connect (+ TLS handshake), bounded by ``connect_timeout``; closed on any failure."""
    with trio.move_on_after(opts.connect_timeout) as cs:
        try:
            sock = await _tcp_connect(opts.host, opts.port)
        except socket.gaierror as e:
            raise MqttError(f"cannot resolve {opts.host!r}: {e.strerror}") from None
        if opts.ssl_context is None:
            return sock
        try:
            return await _tls_handshake(sock, opts.ssl_context, opts.server_hostname or opts.host)
        except BaseException:
            sock.close()
            raise
    assert cs.cancelled_caught
    raise ConnectFailed(f"connecting to {opts.host}:{opts.port} timed out after {opts.connect_timeout:g}s")


async def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a TCP connection to ``host:port`` can be made within ``timeout`` (it is closed at once)."""
    with trio.move_on_after(timeout):
        try:
            sock = await _tcp_connect(host, port)
        except (OSError, MqttError):
            return False
        sock.close()
        return True
    return False


class _Client(paho.Client):
    """paho Client that uses a socket we opened (non-blocking, in trio) instead of making one.

    It also remembers why the socket failed (``gwd_why``): paho turns every
    socket error and an end of stream into the same "Unspecified error".
    """

    _gwd_sock: Any = None
    gwd_why: str | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        try:
            data = super()._sock_recv(bufsize)
        except BlockingIOError:
            raise
        except OSError as e:
            if self.gwd_why is None:
                self.gwd_why = describe_socket_error(e.__cause__ if isinstance(e.__cause__, OSError) else e)
            raise
        if not data and self.gwd_why is None:
            self.gwd_why = "the broker closed the connection"
        return data

    def _sock_send(self, buf) -> int:
        try:
            return super()._sock_send(buf)
        except BlockingIOError:
            raise
        except OSError as e:
            if self.gwd_why is None:
                self.gwd_why = self._alert() or describe_socket_error(e)
            raise

    def _alert(self) -> str | None:
        """After a failed TLS send: a TLS alert the broker sent before closing (it waits in the read side)."""
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return None
        try:
            sock.recv(4096)
        except ssl.SSLError as e:
            if "ALERT" in str(e.reason or e).upper():
                return describe_socket_error(e)
        except OSError:
            pass
        return None

    def _create_socket(self):  # noqa: D401 - paho hook
        sock, self._gwd_sock = self._gwd_sock, None
        if sock is None:
            raise MqttError("no socket prepared (paho tried to reconnect by itself)")
        return sock


def _notify_closing(client, userdata, sock) -> None:
    try:
        trio.lowlevel.notify_closing(sock)
    except RuntimeError:  # not inside trio (never expected: we close before dropping the client)
        pass


class Session:
    """One MQTT connection. Use :meth:`run` in a nursery (``await nursery.start(session.run)``).

    ``run`` returns once the connection is gone (``lost`` is set; ``error`` says
    why) and raises :class:`MqttError` if it never came up. ``on_message`` and
    ``on_publish`` are called from paho callbacks (on the trio thread); they
    must not block.
    """

    def __init__(self, opts: SessionOptions, *, on_message: Callable | None = None,
                 on_publish: Callable[[int], None] | None = None, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.opts = opts
        self.log = log
        self._on_message = on_message
        self._on_publish = on_publish
        self.client: _Client | None = None
        self.sock: socket.socket | None = None
        self.connected = trio.Event()
        self.lost = trio.Event()
        self.error: str | None = None
        self.session_present = False
        self._connack: tuple[bool, str] | None = None
        self._kick = trio.Event()
        self._drained: list[Callable[[], None]] = []
        self._probes: dict[str, _Probe] = {}
        self._unsub_waiters: dict[int, trio.Event] = {}
        #: published before a clean DISCONNECT when the session is cancelled (e.g. the retained "offline")
        self.farewell: tuple[str, bytes, int, bool] | None = None

    # ------------------------------------------------------------------ callbacks (trio thread)
    def _cb_connect(self, client, userdata, flags, reason, properties) -> None:
        self.session_present = bool(flags.session_present)
        self._connack = (not reason.is_failure, str(reason))
        self.connected.set()

    def _cb_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self.error is None:
            self.error = self._why_disconnected(client, flags, reason)
        self.lost.set()

    def _why_disconnected(self, client, flags, reason) -> str:
        text = str(reason)
        if getattr(flags, "is_disconnect_packet_from_server", False):  # MQTT 5 DISCONNECT with a reason code
            return f"the broker closed the connection: {text}"
        if text == "Keep alive timeout":
            return (f"keepalive timeout: no answer from the broker to the keepalive ping (keepalive "
                    f"{self.opts.keepalive:g}s); the broker is frozen or the network path is lost")
        why = getattr(client, "gwd_why", None)
        if why:
            return why
        if text in ("Success", "Normal disconnection"):
            return "connection closed"
        return f"disconnected: {text}"

    def _cb_publish(self, client, userdata, mid, reason, properties) -> None:
        if self._on_publish is not None:
            self._on_publish(mid)

    def _cb_message(self, client, userdata, msg) -> None:
        probe = self._probes.get(msg.topic)
        if probe is not None:
            if msg.retain:  # the answer to the probe subscription: not a command
                probe.retained = msg.payload
                return
            # during a probe the topic matches two of our subscriptions: the broker may send it twice
            if msg.payload in probe.seen:
                return
            probe.seen.add(msg.payload)
        if self._on_message is not None:
            self._on_message(msg)

    def _cb_unsubscribe(self, client, userdata, mid, reasons, properties) -> None:
        ev = self._unsub_waiters.pop(mid, None)
        if ev is not None:
            ev.set()

    # ------------------------------------------------------------------ public API (trio thread)
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> int:
        """Queue (and usually write at once) one PUBLISH; returns its mid. Raises ConnectionLost."""
        c = self.client
        if c is None or self.lost.is_set():
            raise ConnectionLost(self.error or "not connected")
        info = c.publish(topic, payload, qos, retain, properties)
        if info.rc not in (0, paho.MQTT_ERR_AGAIN):
            if info.rc in (paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_CONN_LOST):
                self._set_lost("connection lost while publishing")
                raise ConnectionLost(self.error or "connection lost")
            raise MqttError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        return info.mid

    def subscribe(self, topics: list[tuple[str, int]], *, retain_as_published: bool = False) -> None:
        """Subscribe to ``(filter, qos)`` pairs.

        ``retain_as_published`` (MQTT 5 only) asks the broker to keep the
        retain flag as the publisher set it on every message, so a retained
        message published while we are subscribed can be told apart. MQTT
        3.1.1 brokers clear the flag on such messages (see :meth:`retained_payload`).
        """
        c = self.client
        if c is None or self.lost.is_set() or not topics:
            return
        if self.opts.v5 and retain_as_published:
            rc, _mid = c.subscribe([(t, SubscribeOptions(qos=q, retainAsPublished=True)) for t, q in topics])
        else:
            rc, _mid = c.subscribe(topics)
        if rc:
            self._set_lost(f"subscribe failed: {paho.error_string(rc)}")

    async def retained_payload(self, topic: str, timeout: float = 5.0) -> bytes | None:
        """The payload retained on the broker for ``topic`` (None: nothing retained).

        Subscribes to the exact topic and unsubscribes at once: the broker
        answers SUBACK, then the retained message (retain flag set, being a new
        subscription), then UNSUBACK, in that order on the connection. So once
        UNSUBACK is in, the retained message, if any, has arrived. Messages on
        ``topic`` that come twice in that window (they match two of our
        subscriptions) are passed on once. Raises :class:`ConnectionLost`
        when the broker does not answer within ``timeout``.
        """
        c = self.client
        if c is None or self.lost.is_set():
            raise ConnectionLost(self.error or "not connected")
        probe = _Probe()
        self._probes[topic] = probe
        try:
            done = trio.Event()
            rc, _ = c.subscribe(topic, 0)
            if rc:
                raise ConnectionLost(f"subscribe failed: {paho.error_string(rc)}")
            rc, mid = c.unsubscribe(topic)
            if rc:
                raise ConnectionLost(f"unsubscribe failed: {paho.error_string(rc)}")
            self._unsub_waiters[mid] = done
            self.kick()
            with trio.move_on_after(timeout):
                await _first(done, self.lost)
            if not done.is_set():
                raise ConnectionLost(self.error or f"no UNSUBACK from the broker within {timeout:g}s")
            return probe.retained
        finally:
            self._probes.pop(topic, None)

    def kick(self) -> None:
        """Tell the writer that paho may have queued bytes (call after publishing a burst)."""
        if self.client is not None and self.client.want_write() and not self._kick.is_set():
            self._kick.set()

    def when_drained(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once everything queued so far is written to the socket (QoS 0 "delivery")."""
        if self.client is None or not self.client.want_write():
            fn()
        else:
            self._drained.append(fn)
            self.kick()

    @property
    def inflight(self) -> int:
        return len(self.client._out_messages) if self.client is not None else 0  # noqa: SLF001

    # ------------------------------------------------------------------ lifecycle
    def _make_client(self, sock: socket.socket) -> _Client:
        o = self.opts
        kw: dict[str, Any] = {}
        if not o.v5:
            kw["clean_session"] = o.clean
        c = _Client(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                    protocol=paho.MQTTv5 if o.v5 else paho.MQTTv311, reconnect_on_failure=False, **kw)
        c._gwd_sock = sock  # noqa: SLF001
        # The connector bounds what is in flight itself. paho's own limit would make every PUBACK
        # scan all in-flight messages (_update_inflight): O(window) per ack, ~3k acks/s at 5000.
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        if o.username is not None:
            c.username_pw_set(o.username, o.password)
        if o.will is not None:
            topic, payload, qos, retain = o.will
            c.will_set(topic, payload, qos, retain)
        c.on_connect = self._cb_connect
        c.on_disconnect = self._cb_disconnect
        c.on_message = self._cb_message
        c.on_unsubscribe = self._cb_unsubscribe
        if self._on_publish is not None:
            c.on_publish = self._cb_publish
        c.on_socket_close = _notify_closing
        c.suppress_exceptions = False
        return c

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        o = self.opts
        sock = await open_socket(o)
        self.sock = sock
        try:
            c = self.client = self._make_client(sock)
            props = None
            kw: dict[str, Any] = {}
            if o.v5:
                props = Properties(PacketTypes.CONNECT)
                if not o.clean and o.session_expiry:
                    props.SessionExpiryInterval = int(o.session_expiry)
                kw["clean_start"] = o.clean
            rc = c.connect(o.host, o.port, int(o.keepalive), properties=props, **kw)
            if rc:
                raise MqttError(f"sending CONNECT failed: {c.gwd_why or paho.error_string(rc)}")
            failure: MqttError | None = None
            async with trio.open_nursery() as n:
                n.start_soon(self._reader, sock)
                n.start_soon(self._writer, sock)
                n.start_soon(self._misc)
                self.kick()
                with trio.move_on_after(o.connect_timeout) as cs:
                    await _first(self.connected, self.lost)
                if cs.cancelled_caught:
                    failure = MqttError(f"no CONNACK from {o.host}:{o.port} within {o.connect_timeout:g}s")
                elif self._connack is None:
                    failure = MqttError(self.error or f"{o.host}:{o.port} closed the connection before CONNACK")
                elif not self._connack[0]:
                    reason = self._connack[1]
                    failure = ConnectRefused(f"broker {o.host}:{o.port} refused the connection: {reason}", reason)
                if failure is None:
                    task_status.started(self)
                    try:
                        await self.lost.wait()
                    except trio.Cancelled:  # stopping: say goodbye (no Last Will for a clean stop)
                        await self.goodbye(self.farewell)
                        raise
                n.cancel_scope.cancel()
            if failure is not None:
                self.error = str(failure)
                raise failure
        finally:
            self._close()

    async def goodbye(self, last: tuple[str, bytes, int, bool] | None = None, timeout: float = 1.0) -> None:
        """Clean shutdown: publish ``last`` (e.g. the retained "offline"), then DISCONNECT.

        Shielded and bounded: usable from a cancelled scope. A clean DISCONNECT
        means the broker does not publish the Last Will.
        """
        c = self.client
        if c is None or self.lost.is_set() or self.sock is None:
            return
        sock = self.sock
        with trio.CancelScope(shield=True):
            with trio.move_on_after(timeout):
                try:
                    if last is not None:
                        c.publish(*last)
                    c.disconnect()
                    while c.want_write() and c.socket() is sock:
                        await trio.lowlevel.wait_writable(sock)
                        c.loop_write()
                except (trio.ClosedResourceError, OSError):
                    pass

    def _set_lost(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self.lost.set()

    def _close(self) -> None:
        c, sock = self.client, self.sock
        if c is not None:
            s = c.socket()
            if s is not None:
                c._sock_close()  # noqa: SLF001 - runs on_socket_close (notify_closing), then closes
        if sock is not None and sock.fileno() != -1:
            try:
                trio.lowlevel.notify_closing(sock)
            except RuntimeError:  # pragma: no cover
                pass
            sock.close()
        self._drained = []  # never written: those QoS 0 messages are not delivered
        self._set_lost(self.error or "closed")

    # ------------------------------------------------------------------ loops
    def _check(self, rc: int, sock: socket.socket) -> bool:
        """False (and lost) when paho reported an error or dropped the socket."""
        c = self.client
        if rc or c is None or c.socket() is not sock:
            if rc and rc not in (paho.MQTT_ERR_SUCCESS,):
                self._set_lost(_describe(rc))
            else:
                self._set_lost("connection closed")
            return False
        return True

    async def _reader(self, sock: socket.socket) -> None:
        c = self.client
        pending = getattr(sock, "pending", None)
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                while True:
                    rc = c.loop_read()
                    if not self._check(rc, sock):
                        return
                    # TLS: decrypted bytes can wait in the SSL object, invisible to wait_readable
                    if pending is None or not pending():
                        break
                self._after_io()
                await trio.lowlevel.checkpoint()
        except (trio.ClosedResourceError, OSError) as e:
            self._set_lost(describe_socket_error(e) if isinstance(e, OSError) else "connection closed")

    async def _writer(self, sock: socket.socket) -> None:
        c = self.client
        try:
            while True:
                if not c.want_write():
                    self._after_io()
                    await self._kick.wait()
                    self._kick = trio.Event()
                    continue
                await trio.lowlevel.wait_writable(sock)
                rc = c.loop_write()
                if not self._check(rc, sock):
                    return
        except (trio.ClosedResourceError, OSError) as e:
            self._set_lost(describe_socket_error(e) if isinstance(e, OSError) else "connection closed")

    def _after_io(self) -> None:
        c = self.client
        if c is None:
            return
        if c.want_write():
            if not self._kick.is_set():
                self._kick.set()
        elif self._drained:
            fns, self._drained = self._drained, []
            for fn in fns:
                fn()

    async def _misc(self) -> None:
        c = self.client
        while True:
            await trio.sleep(1.0)
            sock = c.socket()
            if sock is None:
                self._set_lost(self.error or "connection closed")
                return
            rc = c.loop_misc()
            if rc or c.socket() is None:
                self._set_lost(f"no answer to keepalive ping within {self.opts.keepalive}s" if c.socket() is None
                               else _describe(rc))
                return
            self.kick()


class _Probe:
    __slots__ = ("retained", "seen")

    def __init__(self) -> None:
        self.retained: bytes | None = None
        self.seen: set[bytes] = set()


def _describe(rc: int) -> str:
    if rc == paho.MQTT_ERR_CONN_LOST:
        return "connection lost"
    if rc == paho.MQTT_ERR_CONN_REFUSED:
        return "connection refused by the broker"
    return paho.error_string(rc)


async def _first(*events: trio.Event) -> None:
    """Wait until any of ``events`` is set."""
    async with trio.open_nursery() as n:
        for ev in events:
            async def w(ev=ev):
                await ev.wait()
                n.cancel_scope.cancel()
            n.start_soon(w)
