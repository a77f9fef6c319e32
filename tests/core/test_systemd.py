"""gatewayd.systemd: sd_notify datagrams (path and abstract sockets), watchdog timing on a mock
clock, the journald native protocol (binary fields, memfd for big records, fallback), terminal format.

Receivers are AF_UNIX datagram sockets bound by the test, as python-systemd's own tests do.
"""

import array
import fcntl
import logging
import os
import socket
import struct
import sys
import time

import pytest
import trio

from gatewayd.systemd import (HumanFormatter, JournalHandler, Notifier, bind, fields, run_watchdog,
                              setup_logging)


def dgram_socket(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.setblocking(False)
    return s


@pytest.fixture(params=["path", "abstract"])
def notify(request, tmp_path, monkeypatch):
    """(receiving socket, Notifier.from_env()) for a path or an abstract NOTIFY_SOCKET."""
    if request.param == "path":
        s = dgram_socket(str(tmp_path / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    else:
        name = f"gatewayd-test-{os.getpid()}-{id(request)}"
        s = dgram_socket("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    n = Notifier.from_env()
    yield s, n
    n.close()
    s.close()


def test_exact_datagrams(notify):
    s, n = notify
    n.ready()
    assert s.recv(4096) == b"READY=1"
    n.ready(status="3 drivers, 120 points")
    assert s.recv(4096) == b"READY=1\nSTATUS=3 drivers, 120 points"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    reload_msg = s.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reload_msg[0] == "RELOADING=1" and reload_msg[1].startswith("MONOTONIC_USEC=") and len(reload_msg) == 2
    assert before <= int(reload_msg[1].split("=")[1]) <= after  # CLOCK_MONOTONIC in microseconds
    n.stopping()
    assert s.recv(4096) == b"STOPPING=1"
    n.status("reloading\nconfig")
    assert s.recv(4096) == b"STATUS=reloading config"  # one line: a newline would start a new assignment
    n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    n.extend_timeout(15_000_000)
    assert s.recv(4096) == b"EXTEND_TIMEOUT_USEC=15000000"
    n.errno(5)
    assert s.recv(4096) == b"ERRNO=5"
    with pytest.raises(BlockingIOError):
        s.recv(4096)  # nothing else was sent


def test_unset_socket_is_a_no_op_and_failures_are_logged_once(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.enabled and n.send("READY=1") is False
    n.ready(), n.watchdog(), n.close()

    caplog.set_level(logging.DEBUG, logger="gatewayd.systemd")
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.enabled
    for _ in range(3):
        n.ready()  # never raises
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nobody-listens.sock" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2
    n.close()

    caplog.clear()
    n = Notifier("vsock:2:1234")
    assert not n.enabled and "sd_notify disabled" in caplog.text


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "20000000"}, 10.0),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.25),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "not-a-pid"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_PID": str(os.getpid())}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected):
    assert Notifier(None, env=env).watchdog_interval() == expected


@pytest.fixture
def notify_path(tmp_path):
    """(receiving socket, its path)."""
    path = str(tmp_path / "notify.sock")
    s = dgram_socket(path)
    yield s, path
    s.close()


async def test_run_watchdog_pings_at_half_the_interval(autojump_clock, notify_path):
    # autojump_clock is pytest-trio's trio.testing.MockClock(autojump_threshold=0): no real sleeping
    s, path = notify_path
    pings = []  # (virtual time, datagram)

    class Recording(Notifier):
        def watchdog(self):
            super().watchdog()
            pings.append((trio.current_time(), s.recv(100)))  # read each: the kernel queues only ~10

    n = Recording(path, env={"WATCHDOG_USEC": "10000000"})
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, n)
        await trio.sleep(60.5)
        nursery.cancel_scope.cancel()
    n.close()
    assert [(round(t - start, 6), d) for t, d in pings] == [(5.0 * i, b"WATCHDOG=1") for i in range(13)]


async def test_run_watchdog_without_watchdog_sends_nothing(autojump_clock, notify_path):
    s, path = notify_path
    n = Notifier(path, env={})
    with trio.move_on_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, n)
    n.close()
    with pytest.raises(BlockingIOError):
        s.recv(100)


# ---------------------------------------------------------------------------- journal

def journal_entries(data: bytes) -> list[tuple[str, str, str]]:
    """Strict reader of one native-protocol payload: (key, value, "text"|"binary") in order."""
    out, i = [], 0
    while i < len(data):
        nl = data.index(b"\n", i)
        head = data[i:nl]
        if b"=" in head:
            key, value = head.split(b"=", 1)
            out.append((key.decode(), value.decode(), "text"))
            i = nl + 1
        else:
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            value = data[nl + 9: nl + 9 + size]
            assert data[nl + 9 + size: nl + 10 + size] == b"\n", "binary field must end with a newline"
            out.append((head.decode(), value.decode(), "binary"))
            i = nl + 10 + size
    return out


@pytest.fixture
def journal(tmp_path):
    """(receiving socket, JournalHandler pointed at it, logger using only that handler)."""
    path = str(tmp_path / "journal.sock")
    s = dgram_socket(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    h = JournalHandler(path)
    lg = logging.getLogger(f"gatewayd.test.journal.{id(h)}")
    lg.propagate = False
    lg.setLevel(1)
    lg.addHandler(h)
    yield s, h, lg
    lg.removeHandler(h)
    h.close()
    s.close()


def received(s) -> list[dict]:
    out = []
    while True:
        try:
            out.append({k: v for k, v, _ in journal_entries(s.recv(1 << 20))})
        except BlockingIOError:
            return out


def test_journal_fields_and_priorities(journal):
    s, h, lg = journal
    line = sys._getframe().f_lineno + 1
    lg.info("read %d registers", 12, extra=fields(driver="mb1", device="meter-1", point="meter-1/kw"))
    (f,) = received(s)
    assert f["MESSAGE"] == "read 12 registers" and f["PRIORITY"] == "6"
    assert (f["DRIVER"], f["DEVICE"], f["POINT"]) == ("mb1", "meter-1", "meter-1/kw")
    assert f["SYSLOG_IDENTIFIER"] == "gatewayd" and f["LOGGER"] == lg.name and f["THREAD_NAME"] == "MainThread"
    assert (f["CODE_FILE"], f["CODE_LINE"], f["CODE_FUNC"]) == (__file__, str(line),
                                                                "test_journal_fields_and_priorities")

    for level, prio in [(logging.DEBUG, "7"), (logging.INFO, "6"), (logging.WARNING, "4"), (logging.ERROR, "3"),
                        (logging.CRITICAL, "2"), (25, "6"), (5, "7")]:
        lg.log(level, "x")
        assert received(s)[0]["PRIORITY"] == prio

    lg.warning("m", extra={"CONNECTOR": "mqtt1", "RETRY_2": 3, "lower": 1, "Mixed": 1, "_TRUSTED": 1,
                           "9LIVES": 1, "NONE_VALUE": None, "MESSAGE": "spoofed", "PRIORITY": 0})
    (f,) = received(s)
    assert f["CONNECTOR"] == "mqtt1" and f["RETRY_2"] == "3"
    assert not {"lower", "Mixed", "_TRUSTED", "9LIVES", "NONE_VALUE"} & set(f)
    assert f["MESSAGE"] == "m" and f["PRIORITY"] == "4"  # extras cannot replace the handler's fields


def test_journal_multiline_message_uses_the_binary_form_and_carries_the_exception(journal):
    s, h, lg = journal
    try:
        {}["meter-9"]
    except KeyError:
        lg.exception("poll failed\nsecond line", extra={"DEVICE": "meter-9"})
    entries = journal_entries(s.recv(1 << 20))
    forms = {k: form for k, _, form in entries}
    f = {k: v for k, v, _ in entries}
    assert forms["MESSAGE"] == "binary" and forms["DEVICE"] == "text" and forms["PRIORITY"] == "text"
    assert f["PRIORITY"] == "3" and f["DEVICE"] == "meter-9"
    assert f["MESSAGE"].startswith("poll failed\nsecond line\nTraceback (most recent call last):\n")
    assert f["MESSAGE"].endswith("KeyError: 'meter-9'")


def test_journal_record_too_big_for_a_datagram_goes_in_a_sealed_memfd(journal):
    s, h, lg = journal
    lg.info("small")  # connects
    assert received(s)[0]["MESSAGE"] == "small"
    h.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # now 64 KiB cannot be one datagram
    big = "é" * 40_000 + "\nend"
    lg.warning(big, extra={"POINT": "p/1"})
    msg, anc, flags, _ = s.recvmsg(1024, socket.CMSG_SPACE(array.array("i").itemsize))
    assert msg == b"" and h.memfd_sends == 1
    (level, kind, raw), = anc
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = array.array("i", raw)[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        assert seals & want == want  # journald accepts only sealed memfds
        data = os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)
    f = {k: v for k, v, _ in journal_entries(data)}
    assert f["MESSAGE"] == big and f["POINT"] == "p/1" and f["PRIORITY"] == "4"


def test_journal_unreachable_falls_back_to_stderr(tmp_path, capsys):
    h = JournalHandler(str(tmp_path / "no-journald.sock"))
    lg = logging.getLogger("gatewayd.test.nojournal")
    lg.propagate = False
    lg.addHandler(h)
    try:
        lg.error("first", extra={"DRIVER": "mb1"})
        lg.error("second")
    finally:
        lg.removeHandler(h)
        h.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("gatewayd: journal socket ") and "no-journald.sock" in err[0]
    assert err[1].endswith(" ERROR gatewayd.test.nojournal [mb1] first")
    assert err[2].endswith(" ERROR gatewayd.test.nojournal second") and len(err) == 3 and h.failures == 2


# ---------------------------------------------------------------------------- terminal

def make_record(level=logging.INFO, msg="polled %d registers", args=(12,), **extra):
    rec = logging.LogRecord("gatewayd.modbus", level, __file__, 10, msg, args, None)
    rec.created, rec.msecs = 1795348800.123, 123.0  # 2026-11-22 12:00:00.123 UTC
    rec.__dict__.update(extra)
    return rec


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_terminal_format(utc):
    fmt = HumanFormatter()
    assert fmt.format(make_record(**fields(driver="mb1", device="meter-1"))) == \
        "2026-11-22 12:00:00.123 INFO  gatewayd.modbus [mb1/meter-1] polled 12 registers"
    assert fmt.format(make_record(**fields(driver="mb1", device="meter-1", point="meter-1/kw"))) == \
        "2026-11-22 12:00:00.123 INFO  gatewayd.modbus [mb1/meter-1/kw] polled 12 registers"
    assert fmt.format(make_record(logging.WARNING, "plain", ())) == \
        "2026-11-22 12:00:00.123 WARNING gatewayd.modbus plain"
    try:
        raise TimeoutError("no answer")
    except TimeoutError:
        rec = make_record(logging.ERROR, "gave up", (), CONNECTOR="mqtt1")
        rec.exc_info = sys.exc_info()
    lines = fmt.format(rec).splitlines()
    assert lines[0] == "2026-11-22 12:00:00.123 ERROR gatewayd.modbus [mqtt1] gave up"
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "TimeoutError: no answer"

    colored = HumanFormatter(color=True)
    assert colored.format(make_record(logging.ERROR, "x", ())) == \
        "\033[31m2026-11-22 12:00:00.123 ERROR gatewayd.modbus x\033[0m"
    assert "\033" not in colored.format(make_record(logging.INFO, "x", ()))


class FakeTty:
    def isatty(self):
        return True

    def write(self, s):
        pass

    def flush(self):
        pass


def test_setup_logging_picks_journal_or_terminal(monkeypatch, tmp_path):
    path = str(tmp_path / "journal.sock")
    s = dgram_socket(path)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "asyncua", "bacpypes3", "pymodbus")}
    try:
        st = os.fstat(2)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        h = setup_logging("debug", journal_socket=path)
        assert isinstance(h, JournalHandler) and h in root.handlers and root.level == logging.DEBUG
        logging.getLogger("gatewayd.test.setup").info("via the journal", extra=fields(device="d1"))
        (f,) = received(s)
        assert (f["MESSAGE"], f["DEVICE"], f["PRIORITY"]) == ("via the journal", "d1", "6")

        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # some other stream
        h2 = setup_logging("info", journal_socket=path)
        assert not isinstance(h2, JournalHandler) and isinstance(h2.formatter, HumanFormatter)
        assert h not in root.handlers and h.sock is None  # the previous one was removed and closed
        assert isinstance(setup_logging(force_journal=True, journal_socket=path), JournalHandler)

        monkeypatch.delenv("JOURNAL_STREAM")
        monkeypatch.setattr(sys, "stderr", FakeTty())
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert setup_logging().formatter.color is True
        monkeypatch.setenv("NO_COLOR", "1")
        h3 = setup_logging()
        assert h3.formatter.color is False
        assert [x for x in root.handlers if getattr(x, "_gatewayd_setup", False)] == [h3]
    finally:
        for x in list(root.handlers):
            if getattr(x, "_gatewayd_setup", False):
                root.removeHandler(x)
                x.close()
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)
        s.close()


def test_bind_adds_fields_and_merges_with_extra(journal):
    s, h, lg = journal
    drv = bind(lg, driver="mb1", device=None)
    dev = bind(drv, device="meter-1")
    dev.info("a", extra={"POINT": "meter-1/kw"})
    drv.info("b")
    a, b = received(s)
    assert (a["DRIVER"], a["DEVICE"], a["POINT"]) == ("mb1", "meter-1", "meter-1/kw")
    assert b["DRIVER"] == "mb1" and "DEVICE" not in b and "POINT" not in b
    assert fields() == {} and fields(point="p") == {"POINT": "p"}
