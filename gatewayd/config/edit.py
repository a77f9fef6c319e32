"""Edits of the TOML configuration that keep comments and layout.

Used by ``discovery.accept``: the new device goes into the file that defines
``[drivers.<id>]`` (the main file or an include), as a text block inserted after
the driver's last table (and the comments trailing it, never between a comment
and the table it describes), written atomically (temp file + rename, same mode),
then the daemon reloads. Every other byte of the file is kept.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from typing import Any

import tomlkit

from .reading import _scan, toml_problem

__all__ = ["add_device", "atomic_write", "device_text", "insertion_line", "accept_message"]


def atomic_write(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permissions."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o640
    fd, tmp = tempfile.mkstemp(prefix=".gatewayd-", suffix=".toml", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _value(v: Any) -> str:
    if isinstance(v, dict):
        t = tomlkit.inline_table()
        t.update(v)
        return t.as_string()
    return tomlkit.item(v).as_string()


def device_text(driver_id: str, device_id: str, table: dict) -> str:
    """The TOML of one device: ``[drivers.<d>.devices.<id>]`` with its keys, then one
    ``[...points.<p>]`` table per point. Headers are always written (so the device is
    declared explicitly, as :func:`gatewayd.config.load_config` requires)."""
    head = f"drivers.{_key(driver_id)}.devices.{_key(device_id)}"
    lines = [f"[{head}]"]
    for k, v in table.items():
        if k != "points":
            lines.append(f"{_key(k)} = {_value(v)}")
    for pid, ptab in (table.get("points") or {}).items():
        lines.append("")
        lines.append(f"[{head}.points.{_key(pid)}]")
        for k, v in ptab.items():
            lines.append(f"{_key(k)} = {_value(v)}")
    return "\n".join(lines) + "\n"


def insertion_line(text: str, driver_id: str) -> int | None:
    """0-based line index where a new device of ``driver_id`` goes, or None if the file
    declares no ``[drivers.<driver_id>...]`` table header.

    After the driver's last table, its keys and the comments that trail it; but
    before a comment block that sits directly on top of the next table (that
    comment describes the next table, and stays with it).
    """
    lines = text.splitlines()
    headers = [(ln, path) for ln, kind, path, _c in _scan(text) if kind == "table"]
    last = None
    for i, (ln, path) in enumerate(headers):
        if path[:2] == ("drivers", driver_id):
            last = i
    if last is None:
        return None
    if last + 1 >= len(headers):
        return len(lines)
    nxt = headers[last + 1][0] - 1  # 0-based index of the next header
    j = nxt
    # the comment block glued to the next header (no blank line in between) belongs to it
    while j - 1 > headers[last][0] - 1 and lines[j - 1].lstrip().startswith("#"):
        j -= 1
    return j


def add_device(config, driver_id: str, device_id: str, table: dict) -> str:
    """Add ``[drivers.<driver_id>.devices.<device_id>]`` (with its points) to the file
    that defines the driver. Returns that file's path. Raises ValueError if the
    device exists or the driver is not found.

    The device goes after the driver's last table and the comments trailing it,
    separated by a blank line (see :func:`insertion_line`); the rest of the file is
    kept byte for byte. The result is parsed before it replaces the file.
    """
    base = os.path.dirname(config.path)
    candidates = [config.path] + [os.path.join(os.getcwd(), f) if not os.path.isabs(f) else f
                                  for f in config.files[1:]]
    for path in candidates:
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8")
            doc = tomllib.loads(text)
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ValueError(str(toml_problem(e, path, raw))) from None
        drivers = doc.get("drivers")
        if not isinstance(drivers, dict) or driver_id not in drivers:
            continue
        devices = drivers[driver_id].get("devices") or {}
        if device_id in devices:
            raise ValueError(f"device {device_id!r} already exists in {path}")
        block = device_text(driver_id, device_id, table)
        at = insertion_line(text, driver_id)
        lines = text.splitlines(keepends=True)
        if at is None:
            at = len(lines)
        before, after = lines[:at], lines[at:]
        if before and not before[-1].endswith(("\n", "\r")):
            before[-1] += "\n"
        while before and not before[-1].strip():
            before.pop()  # exactly one blank line before the new device
        head = "".join(before) + ("\n" if before else "")
        rest = "".join(after).lstrip("\r\n")
        new_text = head + block + ("\n" + rest if rest else "")
        check = tomllib.loads(new_text)  # never write a file that does not parse
        assert device_id in check["drivers"][driver_id]["devices"]
        atomic_write(path, new_text)
        return path
    raise ValueError(f"no [drivers.{driver_id}] table found in {', '.join(candidates)} (base {base})")


def accept_message(config, driver_id: str, device_id: str, path: str) -> str | None:
    """A hint when an accepted device has no points (no profile matched it), else None."""
    drv = config.drivers.get(driver_id)
    dev = drv.devices.get(device_id) if drv else None
    if dev is None or dev.points:
        return None
    return (f"device {device_id!r} was added with 0 points (no profile matched it): add point tables "
            f"[drivers.{driver_id}.devices.{device_id}.points.<name>] in {path}, or set profile = \"<name>\" "
            f"in [drivers.{driver_id}.devices.{device_id}] if a profile fits (see profiles/ and the driver's README), "
            "then reload")
