"""Backups of state.db, history.db and outbox.db, and offline restore.

A backup is a directory ``<dir>/<gateway>-<UTC time>/`` holding a consistent copy
of each store made with SQLite's online backup API (``Database.backup_to``, run on
the store's writer thread, so it is consistent while the daemon keeps writing)
and a ``manifest.json`` with schema versions, sizes and SHA-256 sums. A
directory is first written as ``*.partial`` and renamed when complete, so a
crash never leaves a half backup that looks whole.

``[backup] interval`` schedules backups inside the daemon; ``retention`` is the
number of backups kept. ``gatewayctl backup run|list`` go over the control
socket; ``gatewayctl backup restore PATH`` runs offline (the daemon must be
stopped): it checks the checksums, refuses a schema newer than this gatewayd
knows, moves the current files to ``<state_dir>/pre-restore-<time>/`` (kept)
and copies the backup in.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
from typing import TYPE_CHECKING, Any

import apsw
import trio

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .plugin import GatewayAPI

log = logging.getLogger("gatewayd.backup")

__all__ = ["run_backup", "list_backups", "restore_backup", "backup_loop", "register_backup_methods",
           "BackupError", "STORES"]

STORES = ("state", "history", "outbox")


class BackupError(Exception):
    """A backup or restore was refused; the message says why and what to do."""


def _known_versions() -> dict[str, int]:
    from .store import history, outbox, state

    return {"state": max(m.version for m in state.MIGRATIONS),
            "history": max(m.version for m in history.MIGRATIONS),
            "outbox": max(m.version for m in outbox.MIGRATIONS)}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def backup_dir(gw: "GatewayAPI") -> str:
    return gw.config.backup.dir or os.path.join(gw.config.gateway.state_dir, "backups")


async def run_backup(gw: "GatewayAPI", dest_dir: str | None = None) -> dict:
    """Back up every store of a running gateway; returns the manifest (with ``path``)."""
    root = dest_dir or backup_dir(gw)
    os.makedirs(root, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"{gw.config.gateway.id}-{stamp}"
    final = os.path.join(root, name)
    tmp = final + ".partial"
    os.makedirs(tmp)
    files = {}
    try:
        for store_name in STORES:
            store = getattr(gw, store_name)
            if store is None or (store_name == "outbox" and gw.config.outbox.memory):
                continue
            target = os.path.join(tmp, f"{store_name}.db")
            await store.backup_to(target)
            files[store_name] = {"file": f"{store_name}.db", "schema_version": store.schema_version,
                                 "bytes": os.path.getsize(target),
                                 "sha256": await trio.to_thread.run_sync(_sha256, target)}
        manifest = {"format": 1, "gateway": gw.config.gateway.id, "gatewayd": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(), "files": files}
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["path"] = final
    removed = _apply_retention(root, gw.config.backup.retention)
    log.info("backup written to %s (%d bytes)%s", final, sum(f["bytes"] for f in files.values()),
             f"; removed {len(removed)} old backup(s)" if removed else "")
    return manifest


def _apply_retention(root: str, keep: int) -> list[str]:
    backups = list_backups(root)
    removed = []
    for b in backups[keep:]:
        shutil.rmtree(b["path"], ignore_errors=True)
        removed.append(b["path"])
    return removed


def list_backups(root: str) -> list[dict]:
    """Complete backups in ``root``, newest first (``*.partial`` directories are ignored)."""
    out = []
    if not os.path.isdir(root):
        return out
    for name in os.listdir(root):
        path = os.path.join(root, name)
        mf = os.path.join(path, "manifest.json")
        if name.endswith(".partial") or not os.path.isfile(mf):
            continue
        try:
            with open(mf, encoding="utf-8") as fh:
                m = json.load(fh)
        except (OSError, ValueError):
            continue
        m["path"] = path
        m["bytes"] = sum(f.get("bytes", 0) for f in m.get("files", {}).values())
        out.append(m)
    out.sort(key=lambda m: m.get("created", ""), reverse=True)
    return out


def _daemon_running(socket_path: str | None) -> bool:
    """True if something answers on the control socket; refuses when it cannot tell (no access)."""
    if not socket_path or not os.path.exists(socket_path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(socket_path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # a stale socket file: nobody listens
    except OSError as e:
        raise BackupError(f"cannot tell whether gatewayd is running ({socket_path}: {e.strerror}): "
                          "run the restore as root, or as a member of the socket's group") from None
    finally:
        s.close()


def _same_owner_as(path: str, ref: str) -> None:
    """Run as root (the usual case), give restored files the owner of the state directory:
    systemd's StateDirectory= does not re-own files below a directory already owned right."""
    st = os.stat(ref)
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, st.st_uid, st.st_gid)


def restore_backup(backup_path: str, state_dir: str, *, socket_path: str | None = None) -> dict:
    """Offline restore of a backup directory into ``state_dir``; returns what was done."""
    if _daemon_running(socket_path):
        raise BackupError(f"gatewayd is running (its control socket {socket_path} answers): stop it first "
                          "(systemctl stop gatewayd), then restore")
    mf = os.path.join(backup_path, "manifest.json")
    try:
        with open(mf, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise BackupError(f"{backup_path} is not a gatewayd backup (no manifest.json)") from None
    except ValueError as e:
        raise BackupError(f"{mf} is damaged: {e}") from None
    known = _known_versions()
    files = manifest.get("files", {})
    for name, f in files.items():
        src = os.path.join(backup_path, f["file"])
        if not os.path.isfile(src):
            raise BackupError(f"{src} is missing from the backup")
        if _sha256(src) != f["sha256"]:
            raise BackupError(f"{src} does not match its checksum in manifest.json: the backup is damaged")
        c = apsw.Connection(src, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            version = c.execute("PRAGMA user_version").fetchall()[0][0]
            if c.execute("PRAGMA integrity_check").fetchall()[0][0] != "ok":
                raise BackupError(f"{src} fails SQLite's integrity check")
        finally:
            c.close()
        if name in known and version > known[name]:
            raise BackupError(f"{src} has schema version {version}, newer than this gatewayd ({__version__}) "
                              f"knows ({known[name]}): upgrade gatewayd before restoring it")
    os.makedirs(state_dir, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = os.path.join(state_dir, f"pre-restore-{stamp}")
    n = 1
    while os.path.exists(aside):  # two restores in one second must not overwrite the first one's files
        aside = os.path.join(state_dir, f"pre-restore-{stamp}-{n}")
        n += 1
    moved = []
    for name in files:
        for suffix in ("", "-wal", "-shm"):
            cur = os.path.join(state_dir, f"{name}.db{suffix}")
            if os.path.exists(cur):
                os.makedirs(aside, exist_ok=True)
                shutil.move(cur, os.path.join(aside, os.path.basename(cur)))
                moved.append(os.path.basename(cur))
    restored = []
    for name, f in files.items():
        dst = os.path.join(state_dir, f"{name}.db")
        shutil.copy2(os.path.join(backup_path, f["file"]), dst + ".restoring")
        with open(dst + ".restoring", "rb") as fh:
            os.fsync(fh.fileno())
        _same_owner_as(dst + ".restoring", state_dir)
        os.replace(dst + ".restoring", dst)
        restored.append(f"{name}.db")
    return {"restored": restored, "previous_files": aside if moved else None, "moved": moved,
            "backup": backup_path}


FIRST_DELAY = 60.0  # s after start before the first backup when none exists yet (let the site settle)
RETRY_AFTER = 600.0  # s before retrying a failed scheduled backup
RECHECK = 60.0  # s: a reload that changes [backup] interval takes effect within this


async def backup_loop(gw: "GatewayAPI") -> None:
    """Scheduled backups every ``[backup] interval`` (nothing while it is unset).

    The schedule counts from the newest backup on disk, not from the daemon's start: a box
    restarted more often than ``interval`` (nightly power cycles) still gets its backups.
    The configuration is read again every minute, so a reload applies."""
    now = trio.current_time()
    newest = _newest_created(backup_dir(gw))
    # trio-clock time of the last backup (wall-clock age carried over from the manifest)
    last = now - max(0.0, _dt.datetime.now(_dt.timezone.utc).timestamp() - newest) if newest is not None else None
    started = now
    while True:
        interval = gw.config.backup.interval
        now = trio.current_time()
        if not interval:
            await trio.sleep(RECHECK)
            continue
        due = last + interval if last is not None else started + FIRST_DELAY
        if now < due:
            await trio.sleep(min(RECHECK, due - now))
            continue
        try:
            await run_backup(gw)
            last = trio.current_time()
        except Exception as e:  # a failed backup is reported, the daemon keeps running
            log.error("scheduled backup failed: %s: %s (next attempt in %.0f s)", type(e).__name__, e,
                      min(RETRY_AFTER, interval))
            last = trio.current_time() - interval + min(RETRY_AFTER, interval)


def _newest_created(root: str) -> float | None:
    """Wall-clock time (epoch s) of the newest complete backup in ``root``, or None."""
    for m in list_backups(root):
        try:
            return _dt.datetime.fromisoformat(m["created"]).timestamp()
        except (KeyError, TypeError, ValueError):
            continue
    return None


def register_backup_methods(registry: Any, gw: "GatewayAPI") -> None:
    from .rpc import Role

    def only_configured(method: str, dir: str | None) -> str:
        """The configured backup directory; a ``dir`` naming any other is refused (no writing or listing
        elsewhere through the socket)."""
        from .rpc import INVALID_PARAMS, RpcError

        configured = backup_dir(gw)
        if dir is not None and os.path.realpath(dir) != os.path.realpath(configured):
            raise RpcError(INVALID_PARAMS, f"{method}: dir must be the configured backup directory {configured} "
                                           f"([backup] dir), not {dir!r}")
        return configured

    async def backup_run(call, dir: str | None = None):
        """Back up state.db, history.db and outbox.db now into the backup directory (consistent while running)."""
        return await run_backup(gw, only_configured("backup.run", dir))

    async def backup_list(call, dir: str | None = None):
        """Backups in the backup directory, newest first."""
        root = only_configured("backup.list", dir)
        return await trio.to_thread.run_sync(list_backups, root)

    registry.add("backup.run", backup_run, role=Role.ADMIN, mutating=True)
    registry.add("backup.list", backup_list, role=Role.VIEWER)
