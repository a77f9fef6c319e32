"""Helpers for the control-socket tests: a test method table and a raw line client.

Every wait here is bounded (``WAIT``), so a broken server fails a test instead
of hanging it.
"""

from __future__ import annotations

import json
import math
import datetime as dt

import trio

from gatewayd.rpc import NOT_FOUND, MethodRegistry, Role, RpcError

WAIT = 5.0


class Probe:
    """What the test handlers saw, with events to wait on (no sleeps)."""

    def __init__(self) -> None:
        self.role: Role | None = Role.VIEWER
        self.seen: dict[str, object] = {}
        self.audit: list[tuple] = []
        self.audited = trio.Event()
        self.release = trio.Event()
        self.slow_started = trio.Event()
        self.slow_cancelled = trio.Event()
        self.watch_started = trio.Event()
        self.watch_ended = trio.Event()
        self.watch_saw_closed: bool | None = None
        self.write_saw_closed = trio.Event()
        self.write_done = trio.Event()

    def role_hook(self, cred):
        """The ``role_map`` given to the server: whatever the test set in ``role``."""
        return self.role


def make_registry(probe: Probe) -> MethodRegistry:
    """The methods of the JSON-RPC spec's examples plus a few to provoke every path."""

    async def audit(actor, method, params, ok, error):
        probe.audit.append((actor, method, params, ok, error))
        probe.audited.set()

    reg = MethodRegistry(audit=audit)

    @reg.method("subtract")
    async def subtract(call, minuend: float, subtrahend: float):
        """minuend - subtrahend."""
        return minuend - subtrahend

    @reg.method("sum")
    async def sum_(call, *numbers: float):
        """The sum of the numbers given by position."""
        return math.fsum(numbers) if any(isinstance(n, float) for n in numbers) else sum(numbers)

    async def record(call, *args):
        probe.seen[call.method] = args

    for name in ("update", "notify_hello", "notify_sum", "foo.bar"):
        reg.add(name, record)

    @reg.method("get_data")
    async def get_data(call):
        return ["hello", 5]

    @reg.method("echo")
    async def echo(call, value=None):
        """Return ``value`` as given."""
        return value

    @reg.method("fail")
    async def fail(call):
        raise RpcError(NOT_FOUND, "no such thing", {"what": "x"})

    @reg.method("crash")
    async def crash(call):
        raise ValueError("boom: /secret/path")

    @reg.method("values")
    async def values(call):
        return {"nan": float("nan"), "inf": float("-inf"),
                "when": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
                "day": dt.date(2024, 5, 1), "raw": b"\x01\xff", "tags": {"b", "a"}}

    @reg.method("circular")
    async def circular(call):
        a: list = []
        a.append(a)
        return a

    @reg.method("watch")
    async def watch(call, limit: int | None = None):
        """Stream ``tick`` notifications until the client leaves (or ``limit`` of them)."""
        n = 0
        probe.watch_started.set()
        try:
            while limit is None or n < limit:
                await call.notify("tick", {"n": n})
                n += 1
                await trio.sleep(0)  # a checkpoint per tick, as a real producer has
                if n >= 3 and limit is None:
                    await call.closed.wait()  # then only the client leaving ends it
                    break
            return {"ticks": n}
        finally:
            probe.watch_saw_closed = call.closed.is_set()
            probe.watch_ended.set()

    @reg.method("slow")
    async def slow(call):
        probe.slow_started.set()
        try:
            await probe.release.wait()
        except trio.Cancelled:
            probe.slow_cancelled.set()
            raise
        return "slept"

    @reg.method("admin_only", role=Role.ADMIN)
    async def admin_only(call):
        return "secret"

    @reg.method("points.write", role=Role.OPERATOR, mutating=True)
    async def write(call, point: str, value, priority: int = 16):
        """Pretend to command a point."""
        return {"point": point, "value": value, "priority": priority}

    @reg.method("slow_write", role=Role.VIEWER, mutating=True)
    async def slow_write(call, point: str):
        await call.closed.wait()
        probe.write_saw_closed.set()
        await probe.release.wait()
        probe.write_done.set()
        return "written"

    return reg


class Raw:
    """A line-oriented client on a trio socket stream; ``recv`` returns None at EOF."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, path: str) -> "Raw":
        with trio.fail_after(WAIT):
            return cls(await trio.open_unix_socket(path))

    async def send(self, text: str | bytes, newline: bool = True) -> None:
        data = text.encode() if isinstance(text, str) else text
        with trio.fail_after(WAIT):
            await self.stream.send_all(data + (b"\n" if newline else b""))

    async def send_json(self, obj) -> None:
        await self.send(json.dumps(obj))

    async def recv_raw(self) -> bytes | None:
        with trio.fail_after(WAIT):
            while b"\n" not in self.buf:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return None
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    async def recv(self):
        line = await self.recv_raw()
        return None if line is None else json.loads(line)

    async def request(self, text: str):
        await self.send(text)
        return await self.recv()

    async def half_close(self) -> None:
        await self.stream.send_eof()

    async def close(self) -> None:
        await self.stream.aclose()


async def expect_silence(raw: Raw) -> None:
    """Nothing was answered to what was sent: the next message is the sentinel's answer.

    Requests on one connection are answered in order, so this needs no timing.
    """
    await raw.send('{"jsonrpc":"2.0","method":"get_data","id":"sentinel"}')
    assert await raw.recv() == {"jsonrpc": "2.0", "result": ["hello", 5], "id": "sentinel"}


# ---------------------------------------------------------------- another uid

NOBODY = 65534

_AS_NOBODY = r"""
import json, os, sys
sys.path[:0] = json.loads(sys.argv[1])
from gatewayd.rpc.client import RpcClient, RpcRemoteError, DaemonNotRunning  # imported while still root
import socket, time
os.setgroups([]); os.setgid(%(uid)d); os.setuid(%(uid)d)
path, calls = sys.argv[2], json.loads(sys.argv[3])
out = []
for method, params in calls:
    try:
        c = RpcClient(path, timeout=20)
        try:
            out.append({"result": c.call(method, params)})
        finally:
            c.close()
    except RpcRemoteError as e:
        out.append({"error": e.message, "code": e.code})
    except DaemonNotRunning as e:
        out.append({"error": str(e), "code": None})
print(json.dumps(out))
"""


def as_nobody(path: str, calls: list[tuple[str, dict]], uid: int = NOBODY) -> list[dict]:
    """Call ``calls`` (method, params) over the socket at ``path`` from a process running as ``uid``
    (we are root: the child drops to it with setuid after importing the client), one connection each.
    Returns ``{"result": ...}`` or ``{"error": message, "code": code}`` per call."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _AS_NOBODY % {"uid": uid}, json.dumps(sys.path), path,
                        json.dumps(calls)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def public_dir() -> str:
    """A fresh directory any user can reach (pytest's tmp_path is root-only): for the control socket."""
    import os
    import tempfile

    d = tempfile.mkdtemp(prefix="gwctl-", dir="/tmp")
    os.chmod(d, 0o755)
    return d


_HOSTILE = r"""
import json, os, select, socket, sys, time
sys.path[:0] = json.loads(sys.argv[1])
os.setgroups([]); os.setgid(%(uid)d); os.setuid(%(uid)d)
path, spec = sys.argv[2], json.loads(sys.argv[3])
socks, opened, failed = {}, 0, []
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except OSError as e:
        failed.append(e.errno)
        s.close()
        return None
    return s
for kind in ("idle", "watch", "partial"):
    socks[kind] = []
    for i in range(spec.get(kind, 0)):
        s = conn()
        if s is None:
            continue
        if kind == "watch":
            s.send(json.dumps({"jsonrpc": "2.0", "method": "points.watch", "params": {}, "id": i}).encode() + b"\n")
        elif kind == "partial":
            s.send(b'{"jsonrpc": "2.0", "method": "points.li')
        socks[kind].append(s)
print(json.dumps({"opened": {k: len(v) for k, v in socks.items()}, "failed": failed}), flush=True)
sys.stdin.readline()  # the parent says when to look at what came back
report = {}
for kind, ss in socks.items():
    got = []
    # idle and half-sent ones: until the server closes them (unless told otherwise)
    wait = spec.get("wait_" + kind, 0.5 if kind == "watch" else 8.0)
    for s in ss:
        data = b""
        deadline = time.monotonic() + wait
        while True:
            r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                data += b"<EOF>"
                break
            data += chunk
        got.append(data.decode(errors="replace"))
    report[kind] = got
print(json.dumps(report), flush=True)
"""


class Hostile:
    """A process running as ``uid`` holding control connections open: ``idle`` ones, ``watch`` ones
    (a points.watch request sent) and ``partial`` ones (half a request line); ``wait_<kind>`` is how
    long to wait for more from one such connection when reporting. ``opened`` says what it
    managed to open; :meth:`report` returns, per kind, what each connection received (``<EOF>`` at the
    end when the server closed it)."""

    def __init__(self, path: str, uid: int = NOBODY, **spec: int) -> None:
        import json
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", _HOSTILE % {"uid": uid}, json.dumps(sys.path), path,
                                      json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, "the hostile process died"
        self.opened = json.loads(line)

    def report(self) -> dict:
        import json

        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        self.close()
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
