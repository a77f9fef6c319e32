"""systemd integration without python-systemd: sd_notify, the watchdog, journald-native logging.

Both protocols are small and stable, so they are spoken directly (no libsystemd,
no python-systemd):

* :class:`Notifier` sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (a path, or
  an abstract ``@name``): ``READY=1`` (the daemon sends it only after every
  driver, connector and the control socket reported started), ``RELOADING=1``
  with ``MONOTONIC_USEC=`` (``Type=notify-reload`` requires the timestamp),
  ``STOPPING=1``, ``STATUS=``, ``WATCHDOG=1``, ``EXTEND_TIMEOUT_USEC=``,
  ``ERRNO=``. Without ``$NOTIFY_SOCKET`` every call is a no-op. Sends are
  non-blocking datagrams; a failure is logged once (then at debug level) and
  never raised: losing a STATUS line must not take the daemon down.
* :func:`run_watchdog` pings ``WATCHDOG=1`` at half ``$WATCHDOG_USEC`` from a
  task in the trio loop, so a stuck loop is exactly what systemd sees. It is
  off when ``$WATCHDOG_PID`` names another process.
* :func:`setup_logging`: when stderr is the journal (``$JOURNAL_STREAM`` matches
  fd 2) a :class:`JournalHandler` writes the native protocol to
  ``/run/systemd/journal/socket``: ``PRIORITY``, ``MESSAGE``,
  ``SYSLOG_IDENTIFIER=gatewayd``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``,
  ``LOGGER``, ``THREAD_NAME`` and every upper-case ``extra`` key as a field
  (``DRIVER``, ``CONNECTOR``, ``DEVICE``, ``POINT``), so
  ``journalctl -u gatewayd DEVICE=meter-1`` works. On a terminal,
  :class:`HumanFormatter` prints one line per record with those fields in
  brackets, coloured only on a TTY without ``$NO_COLOR``.

Journal details. A record is one datagram: ``KEY=value\\n`` per field, and the
binary form (``KEY\\n``, 64-bit little-endian length, value, ``\\n``) for
values containing a newline (multi-line messages, tracebacks). A record too
large for a datagram (``EMSGSIZE``/``ENOBUFS``) goes the way journald itself
documents for that case: written to a sealed memfd whose descriptor is passed
with ``SCM_RIGHTS`` — nothing is truncated. The socket is connected and sends
wait at most ``send_timeout`` (0.5 s): logging runs on the trio thread, and a
stalled journald must not stall the daemon beyond that. A record that cannot be
delivered (journald gone, timeout) is written to stderr in the terminal format
instead — under systemd stderr is itself the journal stream — and the first such
failure is reported once.
"""

from __future__ import annotations

import array
import errno as _errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
import time
import traceback
from typing import Any

import trio

__all__ = ["Notifier", "run_watchdog", "JournalHandler", "HumanFormatter", "setup_logging", "fields", "bind",
           "JOURNAL_SOCKET"]

log = logging.getLogger("gatewayd.systemd")

JOURNAL_SOCKET = "/run/systemd/journal/socket"


# ---------------------------------------------------------------------------- sd_notify

class Notifier:
    """sd_notify sender: ``Notifier.from_env()``; every method is a no-op without a socket.

    ``address`` is ``$NOTIFY_SOCKET``: an absolute path, or ``@name`` for an abstract socket.
    ``env`` (default ``os.environ``) is where :meth:`watchdog_interval` reads its variables.
    """

    def __init__(self, address: str | None, env: dict | None = None) -> None:
        self.address = address or None
        self.env = env if env is not None else os.environ
        self._sock: socket.socket | None = None
        self._target: str | bytes | None = None
        self._warned = False
        if self.address is None:
            return
        if self.address.startswith("@"):
            self._target = "\0" + self.address[1:]
        elif self.address.startswith("/"):
            self._target = self.address
        else:  # e.g. vsock:CID:PORT (systemd in a VM): not supported here
            log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket: sd_notify disabled",
                        self.address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @classmethod
    def from_env(cls) -> "Notifier":
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """One datagram of ``KEY=value`` lines. True if sent; never raises."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._target)
            return True
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed: %s (further failures are logged at debug level)",
                            self.address, e)
            else:
                log.debug("sd_notify to %s failed: %s", self.address, e)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def ready(self, status: str | None = None) -> None:
        """``READY=1`` (also after a reload), optionally with a ``STATUS=`` line."""
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, as ``Type=notify-reload`` requires)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        """``STATUS=`` (one line: newlines would start new assignments)."""
        self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> None:
        """Ask for ``usec`` more µs to start, reload or stop (``EXTEND_TIMEOUT_USEC=``)."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def errno(self, n: int) -> None:
        """Report a failure as an errno-style code (``ERRNO=``), shown by ``systemctl status``."""
        self.send(f"ERRNO={int(n)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``$WATCHDOG_USEC``; None when unset, invalid, or when
        ``$WATCHDOG_PID`` is set and names another process."""
        try:
            usec = int(self.env.get("WATCHDOG_USEC") or 0)
            pid = self.env.get("WATCHDOG_PID")
            if pid and int(pid) != os.getpid():
                return None
        except ValueError:
            return None
        return usec / 2e6 if usec > 0 else None


async def run_watchdog(notifier: Notifier, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Ping ``WATCHDOG=1`` now and then every :meth:`Notifier.watchdog_interval` seconds,
    from the trio loop; sleep forever when the watchdog is off."""
    interval = notifier.watchdog_interval()
    task_status.started()
    if not interval:
        await trio.sleep_forever()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


# ---------------------------------------------------------------------------- logging

_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")  # journald: no leading "_" (trusted) or digit, <= 64
_PLAIN = logging.Formatter()


def _priority(levelno: int) -> int:
    """syslog priority: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, DEBUG (and below) 7."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def _extra_fields(record: logging.LogRecord) -> dict[str, str]:
    """The record's ``extra`` keys that are journal field names (upper case, digits, ``_``)."""
    return {k: str(v) for k, v in record.__dict__.items()
            if v is not None and k not in _STANDARD and _FIELD_NAME.match(k)}


def _record_text(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """The message with the exception and stack (if any) appended."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
    elif record.exc_text:
        text += "\n" + record.exc_text
    if record.stack_info:
        text += "\n" + formatter.formatStack(record.stack_info)
    return text


class JournalHandler(logging.Handler):
    """Writes records to journald's native socket, one datagram each (a sealed memfd when too big).

    ``path`` is the journal socket (a test binds its own). Fields set by the handler
    (``MESSAGE``, ``PRIORITY``, ``CODE_*``, ``LOGGER``, ``THREAD_NAME``) cannot be replaced from
    ``extra``; ``SYSLOG_IDENTIFIER`` can.
    """

    SNDBUF = 8 * 1024 * 1024  # asked for, like sd-journal; the kernel caps it at net.core.wmem_max

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "gatewayd", *,
                 send_timeout: float = 0.5) -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.send_timeout = send_timeout
        self.sock: socket.socket | None = None
        self.failures = 0
        self.memfd_sends = 0
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(HumanFormatter())

    # ---- encoding
    @staticmethod
    def _field(key: str, value: str) -> bytes:
        b = value.encode("utf-8", "replace")
        if b"\n" in b:
            return key.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n"
        return key.encode() + b"=" + b + b"\n"

    def encode(self, record: logging.LogRecord) -> bytes:
        """The native-protocol payload for ``record``."""
        f = {"SYSLOG_IDENTIFIER": self.identifier}
        f.update(_extra_fields(record))
        f.update(MESSAGE=_record_text(record, self.formatter or _PLAIN),
                 PRIORITY=str(_priority(record.levelno)), LOGGER=record.name, THREAD_NAME=str(record.threadName),
                 CODE_FILE=record.pathname, CODE_LINE=str(record.lineno), CODE_FUNC=record.funcName)
        return b"".join(self._field(k, v) for k, v in f.items())

    # ---- sending
    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.SNDBUF)
            s.settimeout(self.send_timeout)  # connected: the wait is on journald's queue, bounded
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        return s

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            self.sock = self._connect()
        try:
            self.sock.send(data)
        except OSError as e:
            if e.errno not in (_errno.EMSGSIZE, _errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        """The payload in a sealed memfd, its descriptor passed with SCM_RIGHTS (journald's way for
        records over the datagram limit)."""
        fd = os.memfd_create("gatewayd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            self.memfd_sends += 1
        finally:
            os.close(fd)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.encode(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(data)
        except OSError as e:
            if self.sock is not None:  # journald restarted, or stalled: reconnect next time
                self.sock.close()
                self.sock = None
            self.failures += 1
            if self.failures == 1:
                sys.stderr.write(f"gatewayd: journal socket {self.path}: {e or type(e).__name__}; "
                                 "records that cannot be sent go to stderr\n")
            self._fallback.emit(record)

    def close(self) -> None:
        with self.lock:
            if self.sock is not None:
                self.sock.close()
                self.sock = None
        super().close()


class HumanFormatter(logging.Formatter):
    """``2026-11-22 12:00:00.123 INFO  gatewayd.modbus [mb1/meter-1] message``.

    The bracket shows the journal fields compactly: driver (or connector), then the point
    (whose id includes its device) or else the device. Colour per level when ``color``.
    """

    COLORS = {"DEBUG": "\033[2m", "WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m"}
    RESET = "\033[0m"

    def __init__(self, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        f = _extra_fields(record)
        keys = ("DRIVER", "CONNECTOR", "POINT") if "POINT" in f else ("DRIVER", "CONNECTOR", "DEVICE")
        tag = "/".join(f[k] for k in keys if k in f)
        line = f"{t} {record.levelname:<5} {record.name}" + (f" [{tag}]" if tag else "") + " " \
            + _record_text(record, self)
        color = self.COLORS.get(record.levelname) if self.color else None
        return f"{color}{line}{self.RESET}" if color else line


def stderr_is_journal() -> bool:
    """True when fd 2 is the stream systemd connected to the journal (``$JOURNAL_STREAM`` = dev:ino)."""
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _use_color(stream: Any) -> bool:
    """Colour on a TTY unless ``$NO_COLOR`` is set to anything non-empty (no-color.org)."""
    try:
        return stream.isatty() and not os.environ.get("NO_COLOR")
    except (AttributeError, ValueError):
        return False


def setup_logging(level: str = "info", *, force_journal: bool | None = None,
                  journal_socket: str = JOURNAL_SOCKET) -> logging.Handler:
    """Journal-native under systemd, human on a terminal; returns the handler installed on the root.

    ``force_journal``: True always uses the journal, False never; None (default) uses it when
    stderr is the journal stream and the socket exists. Calling it again replaces the handler a
    previous call installed (other handlers, e.g. pytest's, are left alone).
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_gatewayd_setup", False):
            root.removeHandler(h)
            h.close()
    use_journal = force_journal if force_journal is not None else (
        stderr_is_journal() and os.path.exists(journal_socket))
    if use_journal:
        handler: logging.Handler = JournalHandler(journal_socket)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(HumanFormatter(color=_use_color(sys.stderr)))
    handler._gatewayd_setup = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("asyncua", "bacpypes3", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def fields(driver: str | None = None, device: str | None = None, point: str | None = None) -> dict:
    """The ``extra=`` dict with the journal fields that are set: ``DRIVER``, ``DEVICE``, ``POINT``."""
    return {k: v for k, v in (("DRIVER", driver), ("DEVICE", device), ("POINT", point)) if v is not None}


class _BoundLogger(logging.LoggerAdapter):
    """Adds its fields to every record; a call's own ``extra=`` adds to (and wins over) them.
    (The stdlib adapter replaces the call's ``extra`` before Python 3.13.)"""

    def process(self, msg: Any, kwargs: dict) -> tuple[Any, dict]:
        kwargs["extra"] = {**self.extra, **(kwargs.get("extra") or {})}
        return msg, kwargs


def bind(logger: logging.Logger | logging.LoggerAdapter, **kw: Any) -> logging.LoggerAdapter:
    """A logger adding journal fields to every record: ``bind(log, driver="mb1", device="meter-1")``.

    Keys are upper-cased (``driver`` -> ``DRIVER``); ``None`` values are left out. Binding an
    adapter from :func:`bind` again adds to its fields.
    """
    extra = {k.upper(): v for k, v in kw.items() if v is not None}
    if isinstance(logger, _BoundLogger):
        extra = {**logger.extra, **extra}
        logger = logger.logger
    return _BoundLogger(logger, extra)
