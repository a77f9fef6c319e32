"""systemd integration without python-systemd: sd_notify, watchdog, journald logging.

* :class:`Notifier` speaks the sd_notify datagram protocol on ``$NOTIFY_SOCKET``
  (path or abstract ``@name``): ``READY=1`` (with ``STATUS=``), ``RELOADING=1``
  plus ``MONOTONIC_USEC=`` (as ``Type=notify-reload`` requires), ``STOPPING=1``,
  ``WATCHDOG=1``. Without ``$NOTIFY_SOCKET`` every call is a no-op.
* :func:`run_watchdog` pings at half ``$WATCHDOG_USEC`` from a task in the trio
  loop, so a stuck loop is exactly what systemd sees.
* :func:`setup_logging`: under systemd (``$JOURNAL_STREAM`` matches stderr) a
  :class:`JournalHandler` writes the journal's native protocol with
  ``PRIORITY`` and structured fields (``DRIVER``, ``DEVICE``, ``POINT``,
  ``CONNECTOR``: any upper-case ``extra`` key), so
  ``journalctl -u gatewayd DEVICE=meter-1`` works; on a terminal a human
  one-line format with the fields in brackets.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
import traceback

import trio

__all__ = ["Notifier", "run_watchdog", "JournalHandler", "HumanFormatter", "setup_logging", "fields", "bind"]

log = logging.getLogger("gatewayd.systemd")


class Notifier:
    """sd_notify sender. ``Notifier.from_env()``; all methods are safe no-ops without a socket."""

    def __init__(self, address: str | None, env: dict | None = None) -> None:
        self.address = address
        self.env = env if env is not None else os.environ
        self._sock = None
        self._warned = False
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> "Notifier":
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    def send(self, *lines: str) -> bool:
        if self._sock is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            self._sock.sendto("\n".join(lines).encode(), addr)
            return True
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed: %s", self.address, e)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *( [f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, usec: int) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def watchdog_interval(self) -> float | None:
        """Half of ``$WATCHDOG_USEC`` in seconds, or None (unset, or meant for another pid)."""
        usec = self.env.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = self.env.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None


async def run_watchdog(notifier: Notifier, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Ping ``WATCHDOG=1`` at half the configured interval; sleep forever if none."""
    interval = notifier.watchdog_interval() if hasattr(notifier, "watchdog_interval") else None
    task_status.started()
    if not interval:
        await trio.sleep_forever()
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


# ---------------------------------------------------------------------------- logging

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _priority(levelno: int) -> int:
    for lvl in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= lvl:
            return _PRIORITY[lvl]
    return 7


def _extra_fields(record: logging.LogRecord) -> dict[str, str]:
    out = {}
    for k, v in record.__dict__.items():
        if k in _STD or k.startswith("_") or not k.isupper() or v is None:
            continue
        if all(c.isupper() or c.isdigit() or c == "_" for c in k):
            out[k] = str(v)
    return out


class JournalHandler(logging.Handler):
    """Writes records to journald's native socket (one datagram per record)."""

    MAX = 200_000  # larger messages are truncated with a marker

    def __init__(self, path: str = "/run/systemd/journal/socket", identifier: str = "gatewayd") -> None:
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @staticmethod
    def _field(key: str, value: str) -> bytes:
        b = value.encode("utf-8", "replace")
        if b"\n" in b:
            return key.encode() + b"\n" + struct.pack("<Q", len(b)) + b + b"\n"
        return key.encode() + b"=" + b + b"\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if len(msg) > self.MAX:
                msg = msg[: self.MAX] + " …[truncated]"
            fields = {"MESSAGE": msg, "PRIORITY": str(_priority(record.levelno)),
                      "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name,
                      "CODE_FILE": record.pathname, "CODE_LINE": str(record.lineno), "CODE_FUNC": record.funcName}
            fields.update(_extra_fields(record))
            data = b"".join(self._field(k, v) for k, v in fields.items())
            self.sock.sendto(data, self.path)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


class HumanFormatter(logging.Formatter):
    """``2026-11-22 12:00:00.123 INFO  gatewayd.modbus [mb1/meter-1] message``."""

    COLORS = {"DEBUG": "\033[2m", "INFO": "", "WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[1;31m"}

    def __init__(self, color: bool = False) -> None:
        super().__init__()
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        f = _extra_fields(record)
        keys = ("DRIVER", "CONNECTOR", "POINT") if "POINT" in f else ("DRIVER", "CONNECTOR", "DEVICE")
        tag = "/".join(f[k] for k in keys if k in f)
        line = f"{t} {record.levelname:<5} {record.name}" + (f" [{tag}]" if tag else "") + f" {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.color and self.COLORS.get(record.levelname):
            line = self.COLORS[record.levelname] + line + "\033[0m"
        return line


def _stderr_is_journal() -> bool:
    js = os.environ.get("JOURNAL_STREAM")
    if not js:
        return False
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(2)
        return st.st_dev == dev and st.st_ino == ino
    except (ValueError, OSError):
        return False


def setup_logging(level: str = "info", *, force_journal: bool | None = None) -> logging.Handler:
    """Journal-native under systemd, human on a terminal. Returns the handler installed."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    use_journal = force_journal if force_journal is not None else (
        _stderr_is_journal() and os.path.exists("/run/systemd/journal/socket"))
    if use_journal:
        handler: logging.Handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(HumanFormatter(color=sys.stderr.isatty() and not os.environ.get("NO_COLOR")))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("asyncua", "bacpypes3", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def fields(driver: str | None = None, device: str | None = None, point: str | None = None) -> dict:
    """``extra=`` dict with the journal fields that are set."""
    return {k: v for k, v in (("DRIVER", driver), ("DEVICE", device), ("POINT", point)) if v is not None}


def bind(logger: logging.Logger, **kw) -> logging.LoggerAdapter:
    """A logger adapter adding journal fields (``bind(log, DRIVER="mb1")``)."""
    return logging.LoggerAdapter(logger, {k.upper(): v for k, v in kw.items()})
