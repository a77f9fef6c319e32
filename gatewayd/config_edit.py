"""Edits of the TOML configuration that keep comments and layout (tomlkit).

Used by ``discovery.accept``: the new device goes into the file that defines
``[drivers.<id>]`` (the main file or an include), written atomically (temp file
+ rename, same mode), then the daemon reloads.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import tomlkit

__all__ = ["add_device", "atomic_write"]


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


def _to_item(value: Any):
    if isinstance(value, dict):
        t = tomlkit.table()
        for k, v in value.items():
            if not isinstance(v, dict):
                t.add(k, _to_item(v))
        for k, v in value.items():
            if isinstance(v, dict):
                t.add(k, _to_item(v))
        return t
    return tomlkit.item(value)


def add_device(config, driver_id: str, device_id: str, table: dict) -> str:
    """Add ``[drivers.<driver_id>.devices.<device_id>]`` (with its points) to the file
    that defines the driver. Returns that file's path. Raises ValueError if the
    device exists or the driver is not found."""
    base = os.path.dirname(config.path)
    candidates = [config.path] + [os.path.join(os.getcwd(), f) if not os.path.isabs(f) else f
                                  for f in config.files[1:]]
    for path in candidates:
        with open(path, encoding="utf-8") as fh:
            doc = tomlkit.parse(fh.read())
        drivers = doc.get("drivers")
        if drivers is None or driver_id not in drivers:
            continue
        drv = drivers[driver_id]
        if "devices" not in drv:
            devices = tomlkit.table(is_super_table=True)
            drv.add("devices", devices)
        devices = drv["devices"]
        if device_id in devices:
            raise ValueError(f"device {device_id!r} already exists in {path}")
        points = table.get("points") or {}
        dev = tomlkit.table()
        for k, v in table.items():
            if k != "points":
                dev.add(k, _to_item(v))
        if points:
            pts = tomlkit.table(is_super_table=True)
            for pid, ptab in points.items():
                pts.add(pid, _to_item(ptab))
            dev.add("points", pts)
        devices.add(device_id, dev)
        atomic_write(path, tomlkit.dumps(doc))
        return path
    raise ValueError(f"no [drivers.{driver_id}] table found in {', '.join(candidates)} (base {base})")
