"""Helpers and fixtures: a pymodbus TCP server in a subprocess, and an RTU responder on a pty pair.

The RTU responder is written here on pymodbus's RTU framer (an implementation
independent of the native scanner the driver uses); it can go silent per unit,
send garbage, corrupt CRCs and answer short, which a real bus does and a
simulator does not.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import tty

import pytest
import trio
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class TcpServer:
    """pymodbus SimDevice servers in their own process (see sim_server.py)."""

    def __init__(self, tmp_path, units, *, port=None, ignore_missing=False):
        self.port = port or free_port()
        self.ready = tmp_path / f"ready-{self.port}"
        self.spec_path = tmp_path / f"spec-{self.port}.json"
        self.spec_path.write_text(json.dumps({"servers": [{"port": self.port, "units": units,
                                                           "ignore_missing": ignore_missing}],
                                              "ready": str(self.ready)}))
        self.proc = None
        self.start()

    def start(self):
        if self.ready.exists():
            self.ready.unlink()
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "sim_server.py"), str(self.spec_path)])
        deadline = time.monotonic() + 20
        while not self.ready.exists():  # another process: its ready file is what we can wait for
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the pymodbus test server did not start")
            time.sleep(0.02)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def tcp_server_factory(tmp_path):
    servers = []

    def make(units, **kw):
        s = TcpServer(tmp_path, units, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------- RTU on a pty


class RtuResponder:
    """Answers Modbus RTU requests on the master side of a pty (trio task)."""

    def __init__(self, units: dict):
        self.units = units          # unit -> {"holding": {addr: v}, "input": {...}, "coils": {addr: bool}}
        self.dead: set[int] = set()
        self.garbage_before = b""   # sent before every answer
        self.corrupt_next = 0       # answers with a broken CRC still to send
        self.short_at: set[int] = set()
        self.no_fc22 = False
        self.requests = 0
        self.framer = FramerRTU(DecodePDU(True))
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def close(self):
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    async def _pty_send(self, data):
        while data:
            await trio.lowlevel.wait_writable(self.master)
            n = os.write(self.master, data)
            data = data[n:]

    async def _pty_recv(self):
        while True:
            await trio.lowlevel.wait_readable(self.master)
            try:
                return os.read(self.master, 4096)
            except BlockingIOError:
                continue

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await self._serve(self._pty_recv, self._pty_send)

    async def serve_tcp(self, stream):
        """RTU frames over a TCP connection (a serial device server in transparent mode)."""
        try:
            await self._serve(lambda: stream.receive_some(4096), stream.send_all)
        except trio.BrokenResourceError:
            pass

    async def _serve(self, recv, send):
        buf = b""
        while True:
            data = await recv()
            if not data:
                return
            buf += data
            while True:
                used, unit, _, frame = self.framer.decode(buf)
                if not used:
                    break
                buf = buf[used:]
                if frame:
                    await self._answer(unit, frame, send)

    async def _answer(self, unit: int, pdu: bytes, send):
        self.requests += 1
        if unit in self.dead or unit not in self.units:
            return
        resp = self.handle(self.units[unit], pdu)
        out = self.framer.encode(resp, unit, 0)
        if self.corrupt_next:
            self.corrupt_next -= 1
            out = out[:-1] + bytes([out[-1] ^ 0xFF])
        await send(self.garbage_before + out)

    def handle(self, u: dict, pdu: bytes) -> bytes:
        fc = pdu[0]

        def exc(code):
            return bytes([fc | 0x80, code])

        if fc in (1, 2, 3, 4):
            addr, count = struct.unpack(">HH", pdu[1:5])
            table = {1: "coils", 2: "discrete", 3: "holding", 4: "input"}[fc]
            mem = u.get(table, {})
            if any(a not in mem for a in range(addr, addr + count)):
                return exc(2)
            if addr in self.short_at:
                count = max(1, count // 2)
            vals = [mem[a] for a in range(addr, addr + count)]
            if fc <= 2:
                data = bytearray((count + 7) // 8)
                for i, v in enumerate(vals):
                    if v:
                        data[i // 8] |= 1 << (i % 8)
                return bytes([fc, len(data)]) + bytes(data)
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *vals)
        if fc == 5:
            addr, v = struct.unpack(">HH", pdu[1:5])
            if addr not in u.get("coils", {}):
                return exc(2)
            u["coils"][addr] = v == 0xFF00
            return pdu[:5]
        if fc == 6:
            addr, v = struct.unpack(">HH", pdu[1:5])
            if addr not in u.get("holding", {}):
                return exc(2)
            u["holding"][addr] = v
            return pdu[:5]
        if fc == 16:
            addr, count = struct.unpack(">HH", pdu[1:5])
            vals = struct.unpack(f">{count}H", pdu[6:6 + 2 * count])
            if any(a not in u.get("holding", {}) for a in range(addr, addr + count)):
                return exc(2)
            for i, v in enumerate(vals):
                u["holding"][addr + i] = v
            return pdu[:5]
        if fc == 22:
            if self.no_fc22:
                return exc(1)
            addr, and_m, or_m = struct.unpack(">HHH", pdu[1:7])
            cur = u["holding"][addr]
            u["holding"][addr] = (cur & and_m) | (or_m & ~and_m & 0xFFFF)
            return pdu[:7]
        return exc(1)


@pytest.fixture
async def rtu_bus():
    r = RtuResponder({})
    async with trio.open_nursery() as n:
        await n.start(r.serve)
        try:
            yield r
        finally:
            n.cancel_scope.cancel()
    r.close()


# --------------------------------------------------------------------------- a hand-written TCP slave


class MiniSlave:
    """A small Modbus TCP slave written here (trio, in the test's process, on loopback).

    Independent of pymodbus and of the driver's framing, and configurable in the ways field
    devices misbehave: ``max_registers`` (a larger read answers exception 03), ``busy`` (the next
    N requests answer exception 06), ``fc22`` (False: mask write answers 01), ``hostile`` (a
    function ``(tid, unit, pdu) -> bytes | None`` whose bytes are sent instead of the answer),
    ``silent_units`` (requests applied, never answered), ``fifo`` (FC24 queues), ``delay`` (seconds
    before each answer: a slow device). Every request is logged in
    ``log`` as ``(unit, function, address, count)``; ``served`` is set after each answer.
    """

    def __init__(self, units: dict, *, max_registers: int = 125, fc22: bool = True):
        self.units = {int(u): {int(a): v for a, v in regs.items()} for u, regs in units.items()}
        self.max_registers = max_registers
        self.fc22 = fc22
        self.busy = 0
        self.hostile = None
        self.silent_units: set[int] = set()
        self.fifo: dict[int, list[int]] = {}
        self.log: list[tuple] = []
        self.port = None
        self.listeners = []
        self.streams: set = set()
        self.answered = 0
        self.connections = 0
        self.delay = 0.0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        """Listen (on ``port`` when set, e.g. again after :meth:`stop`) until stopped or cancelled."""
        with trio.CancelScope() as self._scope:
            self.listeners = await trio.open_tcp_listeners(self.port or 0, host="127.0.0.1")
            self.port = self.listeners[0].socket.getsockname()[1]
            task_status.started(self)
            await trio.serve_listeners(self._conn, self.listeners)

    async def stop(self):
        """Go away as a powered-off device does: stop listening and drop every connection."""
        self._scope.cancel()
        await self.drop_connections()

    async def _conn(self, stream):
        self.connections += 1
        self.streams.add(stream)
        buf = b""
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
                while len(buf) >= 7:
                    tid, _, length, unit = struct.unpack(">HHHB", buf[:7])
                    if len(buf) < 6 + length:
                        break
                    pdu, buf = buf[7:6 + length], buf[6 + length:]
                    if self.delay:
                        await trio.sleep(self.delay)  # a slow device (RS-485 behind a gateway, a busy CPU)
                    out = self.answer(tid, unit, pdu)
                    if out is not None:
                        await stream.send_all(out)
                    self.answered += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.streams.discard(stream)

    async def drop_connections(self):
        for s in list(self.streams):
            await s.aclose()

    def answer(self, tid: int, unit: int, pdu: bytes) -> bytes | None:
        fc = pdu[0]
        addr, count = struct.unpack(">HH", pdu[1:5]) if len(pdu) >= 5 else (None, None)
        self.log.append((unit, fc, addr, count))
        if self.hostile is not None:
            raw = self.hostile(tid, unit, pdu)
            if raw is not None:
                return raw
        if unit not in self.units:
            return None
        if self.busy:
            self.busy -= 1
            resp = bytes([fc | 0x80, 6])
        else:
            resp = self.handle(self.units[unit], pdu)
        if unit in self.silent_units:  # applied, never answered (a write may land all the same)
            return None
        return struct.pack(">HHHB", tid, 0, len(resp) + 1, unit) + resp

    def handle(self, regs: dict, pdu: bytes) -> bytes:
        fc = pdu[0]

        def exc(code):
            return bytes([fc | 0x80, code])

        if fc in (3, 4):
            addr, count = struct.unpack(">HH", pdu[1:5])
            if count > self.max_registers:
                return exc(3)
            if any(a not in regs for a in range(addr, addr + count)):
                return exc(2)
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *(regs[a] for a in range(addr, addr + count)))
        if fc == 6:
            addr, v = struct.unpack(">HH", pdu[1:5])
            if addr not in regs:
                return exc(2)
            regs[addr] = v
            return pdu[:5]
        if fc == 16:
            addr, count = struct.unpack(">HH", pdu[1:5])
            vals = struct.unpack(f">{count}H", pdu[6:6 + 2 * count])
            if any(a not in regs for a in range(addr, addr + count)):
                return exc(2)
            for i, v in enumerate(vals):
                regs[addr + i] = v
            return pdu[:5]
        if fc == 22:
            if not self.fc22:
                return exc(1)
            addr, and_m, or_m = struct.unpack(">HHH", pdu[1:7])
            if addr not in regs:
                return exc(2)
            regs[addr] = (regs[addr] & and_m) | (or_m & ~and_m & 0xFFFF)
            return pdu[:7]
        if fc == 24:
            (addr,) = struct.unpack(">H", pdu[1:3])
            q = self.fifo.get(addr)
            if q is None:
                return exc(2)
            return bytes([24]) + struct.pack(f">HH{len(q)}H", 2 + 2 * len(q), len(q), *q)
        return exc(1)


@pytest.fixture
async def mini_slave_factory():
    """``await make(units, **options)`` starts a :class:`MiniSlave`; all stop after the test."""
    async with trio.open_nursery() as n:
        async def make(units, **kw):
            return await n.start(MiniSlave(units, **kw).serve)

        yield make
        n.cancel_scope.cancel()


class SharedLine:
    """A serial device server in transparent mode: every TCP connection feeds ONE RS-485 line.

    Answers go to every connection (the server cannot know who asked). The line is
    half-duplex: a frame arriving while an answer is still on the wire (``tx_time``) collides
    with it; both are lost (the answer arrives with a broken CRC, the new request never
    reaches a device). ``connections`` counts the TCP connections opened.
    """

    def __init__(self, responder: RtuResponder, tx_time: float = 0.02):
        self.responder = responder
        self.tx_time = tx_time
        self.conns: set = set()
        self.busy_until = 0.0
        self.collided = False
        self.connections = 0
        self.collisions = 0
        self.port = None

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._conn, listeners)

    async def _conn(self, stream):
        self.connections += 1
        self.conns.add(stream)
        framer = FramerRTU(DecodePDU(True))
        buf = b""
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                buf += data
                while True:
                    used, unit, _, frame = framer.decode(buf)
                    if not used:
                        break
                    buf = buf[used:]
                    if frame:
                        await self._on_line(unit, frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.conns.discard(stream)

    async def _on_line(self, unit: int, pdu: bytes):
        now = trio.current_time()
        if now < self.busy_until:  # the line is carrying an answer: both frames are destroyed
            self.collided = True
            self.collisions += 1
            return
        r = self.responder
        r.requests += 1
        if unit not in r.units:
            return
        out = r.framer.encode(r.handle(r.units[unit], pdu), unit, 0)
        self.busy_until = now + self.tx_time
        self.collided = False
        await trio.sleep(self.tx_time)  # the answer's time on the wire
        if self.collided:
            out = out[:-1] + bytes([out[-1] ^ 0xFF])
        for s in list(self.conns):
            try:
                await s.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
