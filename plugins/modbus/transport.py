"""Links to Modbus devices: TCP (MBAP), RTU on a serial port, RTU over TCP.

Every link serializes its requests with one lock, so several devices (unit ids)
behind one endpoint or on one RS-485 bus share it without interleaving frames.
I/O runs on the trio loop: trio sockets, and the serial port's non-blocking file
descriptor through ``trio.lowlevel.wait_readable`` — no thread, no private loop.

Error kinds raised by :meth:`Link.request`:

* :class:`pdu.ModbusException` — the device answered with an exception (kind "exception");
* :class:`Timeout` — no (valid) answer in time (kind "timeout");
* :class:`TransportError` — connect/read/write failed, peer closed (kind "transport");
* :class:`pdu.InvalidResponse` — an answer that is not the answer to our request (kind "invalid").

After a timeout, a cancel or garbage mid-request a TCP link is closed and reopened
on the next request (a late answer would otherwise desynchronize it); a serial bus
drains what is left on the line and keeps the inter-frame silence (t3.5) before
the next frame.
"""

from __future__ import annotations

import errno
import os
import time

import trio

from gatewayd.plugin import native

from .pdu import InvalidResponse, Mbap, ModbusException, Request

rtu = native.rtu

__all__ = ["Timeout", "TransportError", "connect", "Link", "TcpLink", "RtuStreamLink", "SerialLink", "t35"]


class Timeout(Exception):
    kind = "timeout"


class TransportError(Exception):
    kind = "transport"


def t35(baudrate: int, bits_per_char: int = 11) -> float:
    """Inter-frame silence: 3.5 character times, fixed 1.75 ms above 19200 baud (Modbus over serial line spec)."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * bits_per_char / baudrate


class Link:
    """A serialized request/response channel to one endpoint (TCP) or one bus (serial)."""

    name = "link"

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.requests = 0
        self.users = 0
        # Link health shared by every device behind this endpoint/bus: ``failing_since`` (wall clock)
        # is set when the link itself failed (could not connect, connection lost, port gone); the first
        # answer afterwards calls every ``on_back`` listener, so each device waiting in backoff on this
        # link retries at once instead of at the end of its own backoff.
        self.failing_since: float | None = None
        self.on_back: list = []

    async def request(self, unit: int, req: Request, timeout: float) -> bytes | None:
        """Send ``req`` to ``unit``; return the response PDU (function code + data).

        One transaction at a time: the lock spans the whole request/answer exchange, so devices,
        writes, diagnostics and discovery scans sharing this link (one TCP endpoint, one serial
        line, one serial device server) never interleave frames."""
        async with self.lock:
            try:
                resp = await self._locked_request(unit, req, timeout)
            except ModbusException:
                self._answered()
                raise
            except TransportError:
                if self.failing_since is None:
                    self.failing_since = time.time()
                raise
            self._answered()
            return resp

    def _answered(self) -> None:
        if self.failing_since is not None:
            self.failing_since = None
            for cb in list(self.on_back):
                cb()

    async def _locked_request(self, unit: int, req: Request, timeout: float) -> bytes | None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class TcpLink(Link):
    """One persistent TCP connection (MBAP framing), reused by polls, writes and diagnostics."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.name = f"tcp:{host}:{port}"
        self.stream: trio.SocketStream | None = None
        self.mbap = Mbap()
        self.buf = bytearray()

    async def close(self) -> None:
        if self.stream is not None:
            s, self.stream = self.stream, None
            with trio.CancelScope(shield=True):
                await s.aclose()
        self.buf.clear()

    async def _locked_request(self, unit, req, timeout):
        ok = False
        try:
            with trio.move_on_after(timeout):
                if self.stream is None:
                    self.stream = await connect(self.host, self.port, timeout)
                tid, frame = self.mbap.build(unit, req.pdu)
                await self.stream.send_all(frame)
                self.requests += 1
                while True:
                    used, got_unit, got_tid, pdu = self.mbap.parse(self.buf)
                    if used:
                        del self.buf[:used]
                        if got_tid != tid:
                            continue  # a late answer to an abandoned request: skip it
                        if got_unit != unit:
                            raise InvalidResponse(f"answer from unit {got_unit}, expected {unit}")
                        ok = True
                        return _check(req, pdu, unit)
                    data = await self.stream.receive_some(65536)
                    if not data:
                        raise TransportError(f"{self.host}:{self.port} closed the connection (the device restarted, "
                                             "or allows fewer connections: check its connection limit)")
                    self.buf += data
            raise Timeout(f"no response within {timeout * 1000:.0f} ms")
        except ModbusException:
            raise  # a clean answer: the connection stays usable (ok is set)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise TransportError(f"connection to {self.host}:{self.port} lost: {_oserror(e)}") from None
        finally:
            if not ok:  # after a timeout, cancel or garbage the connection is out of step: reopen it
                await self.close()


_CONNECT_HINTS = {
    errno.ECONNREFUSED: "connection refused: nothing listens on that port (is the device on, is the port right?)",
    errno.ETIMEDOUT: "connection timed out: nothing answered (check the address, the route and any firewall)",
    errno.EHOSTUNREACH: "no route to the host (check the address and the network)",
    errno.ENETUNREACH: "no route to the network (check the address and this machine's routes)",
    errno.EHOSTDOWN: "the host is down (check that it is powered and connected)",
}


async def connect(host: str, port: int, timeout: float) -> trio.SocketStream:
    """Open a TCP connection within ``timeout`` seconds; a failure raises :class:`TransportError`
    saying what happened (refused / timed out / no route / name not resolved) instead of trio's
    "all attempts to connect failed". Nothing was sent, so a write that fails here was not applied."""
    try:
        with trio.move_on_after(timeout):
            return await trio.open_tcp_stream(host, port)
    except OSError as e:
        raise TransportError(f"cannot connect to {host}:{port}: {_connect_reason(e)}") from None
    raise TransportError(f"cannot connect to {host}:{port}: no answer within {timeout * 1000:.0f} ms "
                         "(check the address, the route and any firewall)")


def _leaf_errors(e: BaseException) -> list[BaseException]:
    """The individual errors behind trio's "all attempts to connect failed" (its cause is a group)."""
    inner = getattr(e, "exceptions", None)
    if inner:
        return [x for sub in inner for x in _leaf_errors(sub)]
    if e.__cause__ is not None and e.__cause__ is not e:
        return _leaf_errors(e.__cause__)
    return [e]


def _connect_reason(e: OSError) -> str:
    import socket

    for leaf in _leaf_errors(e):
        if isinstance(leaf, socket.gaierror):
            return f"the name does not resolve ({leaf.strerror or leaf})"
        if isinstance(leaf, OSError) and leaf.errno in _CONNECT_HINTS:
            return _CONNECT_HINTS[leaf.errno]
    leaf = _leaf_errors(e)[0]
    return getattr(leaf, "strerror", None) or str(leaf) or type(leaf).__name__


def _oserror(e: BaseException) -> str:
    cause = e.__cause__ if isinstance(e, trio.BrokenResourceError) and e.__cause__ else e
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


def _check(req: Request, pdu: bytes, unit: int | None = None) -> bytes:
    if not pdu:
        raise InvalidResponse("empty response")
    fc = pdu[0]
    if fc & 0x80:
        if (fc & 0x7F) != req.function:
            raise InvalidResponse(f"exception response to function {fc & 0x7F}, expected {req.function}")
        if len(pdu) != 2:
            raise InvalidResponse(f"exception response of {len(pdu)} bytes (2 expected): {pdu.hex()}")
        raise ModbusException(req.function, pdu[1], unit)
    if fc != req.function:
        raise InvalidResponse(f"answer with function {fc} to a function {req.function} request")
    return pdu


class _RtuLink(Link):
    """RTU framing (native CRC and response scanner) over a byte stream; subclasses do the I/O."""

    silence = 0.0
    char_time = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.idle_at = 0.0          # trio time from which the line has been quiet long enough
        self.bad_crc = 0
        self.garbage_bytes = 0
        self._scanner: rtu.RtuResponseScanner | None = None

    async def _open(self, timeout: float) -> None:
        raise NotImplementedError

    async def _send(self, data: bytes) -> None:
        raise NotImplementedError

    async def _recv(self) -> bytes:
        raise NotImplementedError

    def _drain(self) -> None:
        """Discard bytes already received (late answers, noise)."""

    async def _locked_request(self, unit, req, timeout):
        try:
            await self._open(timeout)
            await trio.sleep_until(self.idle_at)
            self._drain()
            frame = rtu.frame(unit, req.pdu)
            await self._send(frame)
            self.requests += 1
            tx = len(frame) * self.char_time  # the frame is still on the wire after write() returns
            if unit == 0:  # broadcast: no answer; give the devices time to act
                self.idle_at = trio.current_time() + tx + max(self.silence, 0.1)
                return None
            if self._scanner is None:
                self._scanner = rtu.RtuResponseScanner(unit, req.function, byte_count=req.byte_count,
                                                       fixed_length=req.fixed_length)
            else:
                self._scanner.reset(unit, req.function, byte_count=req.byte_count, fixed_length=req.fixed_length)
            sc = self._scanner
            crc0, garbage0 = sc.bad_crc, sc.garbage_bytes
            result = None
            with trio.move_on_after(timeout + tx):
                while result is None:
                    chunk = await self._recv()
                    result = sc.feed(chunk)
            self.bad_crc += sc.bad_crc - crc0
            self.garbage_bytes += sc.garbage_bytes - garbage0
            self.idle_at = trio.current_time() + self.silence
            if result is None:
                await self._after_timeout()
                if sc.bad_crc > crc0:
                    raise InvalidResponse(f"answer with a bad CRC ({sc.bad_crc - crc0} frame(s)); nothing valid "
                                          f"within {timeout * 1000:.0f} ms")
                raise Timeout(f"no response within {timeout * 1000:.0f} ms")
            if result.exception_code is not None:
                raise ModbusException(req.function, result.exception_code, unit)
            return _check(req, result.pdu, unit)
        except TransportError:
            await self.close()
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            await self.close()
            raise TransportError(f"{self.name}: {_oserror(e)}") from None
        except trio.Cancelled:
            await self._after_timeout()  # cancelled mid-request: same as a timeout
            raise

    async def _after_timeout(self) -> None:
        pass


class RtuStreamLink(_RtuLink):
    """RTU frames over TCP (serial device servers in transparent mode); reopened after a timeout."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.name = f"rtu-over-tcp:{host}:{port}"
        self.stream: trio.SocketStream | None = None

    async def _open(self, timeout):
        if self.stream is None:
            self.stream = await connect(self.host, self.port, timeout)

    async def _send(self, data):
        await self.stream.send_all(data)

    async def _recv(self):
        data = await self.stream.receive_some(4096)
        if not data:
            raise TransportError(f"{self.host}:{self.port} closed the connection")
        return data

    async def _after_timeout(self):
        await self.close()

    async def close(self):
        if self.stream is not None:
            s, self.stream = self.stream, None
            with trio.CancelScope(shield=True):
                await s.aclose()


class SerialLink(_RtuLink):
    """One RS-485/RS-232 port shared by every device on it (pyserial, non-blocking fd)."""

    def __init__(self, port: str, *, baudrate: int = 9600, bytesize: int = 8, parity: str = "N",
                 stopbits: int = 1) -> None:
        super().__init__()
        self.port = port
        self.name = f"rtu:{port}"
        self.params = dict(baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits)
        bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
        self.char_time = bits / baudrate
        self.silence = t35(baudrate, bits)
        self.serial = None

    async def _open(self, timeout):
        if self.serial is None:
            import serial  # pyserial; part of the modbus extra

            try:
                self.serial = serial.Serial(self.port, timeout=0, exclusive=True, **self.params)
            except (serial.SerialException, ValueError) as e:
                raise TransportError(f"cannot open {self.port}: {e}") from None
            self.idle_at = trio.current_time() + self.silence

    def _fd(self) -> int:
        return self.serial.fileno()

    async def _send(self, data):
        view = memoryview(data)
        while view:
            await trio.lowlevel.wait_writable(self._fd())
            try:
                n = os.write(self._fd(), view)
            except BlockingIOError:
                continue
            view = view[n:]

    async def _recv(self):
        while True:
            await trio.lowlevel.wait_readable(self._fd())
            try:
                data = os.read(self._fd(), 4096)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno == errno.EIO:  # the other end of a pty/USB adapter went away
                    raise TransportError(f"{self.port}: I/O error (device gone?)") from None
                raise
            if not data:
                raise TransportError(f"{self.port}: end of file")
            return data

    def _drain(self):
        while True:
            try:
                data = os.read(self._fd(), 4096)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.garbage_bytes += len(data)

    async def close(self):
        if self.serial is not None:
            s, self.serial = self.serial, None
            try:
                trio.lowlevel.notify_closing(s.fileno())
            except (OSError, ValueError, TypeError):
                pass
            s.close()
