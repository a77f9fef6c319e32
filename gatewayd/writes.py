"""The write protocol: every command to a device goes through :class:`WriteProtocol`.

``points.write`` over RPC, MQTT commands and anything else calling
``Gateway.write_point`` take the same path::

    check      writable? priority 1..16? value of the right kind (coerce)? within the
               write limits (point min/max and the driver's raw range, in point units)?
               -> refused: PointError, audited with the actor (ok=false), nothing changes
    command    set the level in the 16-level priority array and persist it (state.db)
    send       the effective value (or, for drivers with ``write_priority``, the level)
               to the driver, under the point's write lock, within WRITE_TIMEOUT
    outcome    ok           -> write status ok, read-back value ingested, command tracked
               refused /    -> the level is restored to what it was (and persisted):
               encode /        the array is exactly as before, the caller gets the refusal
               invalid
               timeout /    -> the command stays (the device may have applied it); write
               transport /     status "pending"; write tuning re-sends it
               unavailable
    record     audit entry (actor, ok, error) and a WriteCompleted event

Write tuning (Haxall's writeOnOpen/writeOnStart/writeMinTime/writeMaxTime), per
driver with device and point overrides (``write_on_open``, ``write_on_start``,
``write_min_time``, ``write_max_time``):

* on start: the first time a driver instance reports a device reachable, the
  effective value of each of its commanded points is sent again (``write_on_start``);
* on open: each later time the device is reachable after failures or ``down``
  (a connection that reopened, a device that restarted) (``write_on_open``);
* ``write_max_time``: re-sent at least this often; ``write_min_time``: sent at
  most this often (a command within the interval is kept and sent at its end);
* only commanded points are re-sent (a command at some level); a point at its
  relinquish default is not (the default is written once, when the last level is
  relinquished), so a value set locally at the device is not overwritten by every
  restart of gatewayd unless someone commanded the point.

A commanded point whose readings disagree with the command twice in a row gets
the flag ``overridden`` and a :class:`~gatewayd.events.WriteOverridden` event
(changed at the device); the flag clears when readings agree again or the next
write is confirmed.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Hashable

import trio

from .events import WriteCompleted, WriteOverridden
from .plugin import PRIORITY_ARRAY, GatewayAPI, WriteError, supports
from .points import PointError, PointState, coerce_value

log = logging.getLogger("gatewayd.writes")

__all__ = ["WriteProtocol", "write_limits", "WRITE_TIMEOUT", "RETRY_AFTER"]

WRITE_TIMEOUT = 30.0
RETRY_AFTER = 10.0  # s before a command kept after a timeout/link error is tried again


def _num(x: float) -> str:
    """A limit or value as people read it (6553.5, not 6553.500000000001)."""
    return f"{x:.10g}"


def write_limits(p: PointState, driver_cls: Any = None) -> tuple[float | None, float | None, Any, Any]:
    """``(lo, hi, raw_lo, raw_hi)`` of an analog point in point units.

    ``lo``/``hi`` combine the point's ``min``/``max`` with the driver's
    :meth:`~gatewayd.plugin.Driver.write_range` mapped through the point's
    scale/offset/calibration/convert; ``raw_lo``/``raw_hi`` are the raw limits when
    they are the tighter ones (for the message), else ``None``.
    """
    cfg = p.cfg
    lo, hi = cfg.min, cfg.max
    raw_lo = raw_hi = None
    rng = (None, None)
    if driver_cls is not None:
        try:
            rng = driver_cls.write_range(cfg) or (None, None)
        except Exception:  # a driver bug must not make every write fail
            log.error("%s.write_range(%s) failed", getattr(driver_cls, "__name__", driver_cls), cfg.id,
                      exc_info=True)
    ends = []
    for r in rng:
        if r is None:
            ends.append(None)
            continue
        try:
            v = p.convert_in(r)
        except (ValueError, TypeError, OverflowError):
            v = None
        ends.append((v, r) if v is not None and math.isfinite(v) else None)
    mapped = [e for e in ends if e is not None]
    if len(mapped) == 2:
        (a, ra), (b, rb) = sorted(mapped)
        mlo, mhi = (a, ra), (b, rb)
    elif len(mapped) == 1:
        # one open end: which side it bounds depends on the sign of the mapping
        v, r = mapped[0]
        increasing = cfg.scale >= 0
        is_low = (ends[0] is not None) == increasing
        mlo, mhi = ((v, r), None) if is_low else (None, (v, r))
    else:
        mlo = mhi = None
    if mlo is not None and (lo is None or mlo[0] > lo):
        lo, raw_lo = mlo
    if mhi is not None and (hi is None or mhi[0] < hi):
        hi, raw_hi = mhi
    return lo, hi, raw_lo, raw_hi


class WriteProtocol:
    """The write path of one gateway (``gateway.writer``): checks, priority array,
    driver call, outcome, audit, events, and write tuning (its :meth:`run` task)."""

    def __init__(self, gw: "GatewayAPI") -> None:
        self.gw = gw
        self._locks: dict[tuple[str, Hashable], trio.Lock] = {}
        self._due: dict[str, float] = {}       # point id -> when to send (trio clock)
        self._reason: dict[str, str] = {}      # point id -> why (start/open/max_time/command/retry)
        # commands deferred by write_min_time: point id -> {level: (slot before, actor)}, to send
        # those levels (write_priority drivers) and to restore them if the device refuses
        self._deferred: dict[str, dict[int, tuple[Any, str]]] = {}
        self._last_sent: dict[str, float] = {}  # point id -> last time the driver was called for it
        self._wake = trio.Event()
        self.stats = {"resent": 0, "resend_failed": 0, "deferred": 0, "refused": 0, "overridden": 0}
        gw.points.device_opened = self._device_opened
        gw.points.on_override = self._on_override

    # ------------------------------------------------------------------ locks for drivers
    def device_lock(self, device_id: str, key: Hashable = None) -> trio.Lock:
        """The lock of ``(device_id, key)`` (see ``DriverContext.write_lock``)."""
        k = (device_id, key)
        lock = self._locks.get(k)
        if lock is None:
            lock = self._locks[k] = trio.Lock()
        return lock

    # ------------------------------------------------------------------ checks
    def _driver_cls(self, p: PointState) -> Any:
        r = self.gw.drivers.get(p.cfg.driver)
        if r is not None:
            return r.cls
        drv = self.gw.config.drivers.get(p.cfg.driver)
        return self.gw.registry.get("driver", drv.type) if drv is not None else None

    def check_value(self, p: PointState, value: Any) -> Any:
        """Coerce ``value`` for ``p`` and check its write limits; raises :class:`PointError`."""
        value = coerce_value(p.cfg.kind, value, p.cfg.states)
        if value is None or p.cfg.kind != "analog":
            return value
        unit = f" {p.unit}" if p.unit else ""
        lo, hi, raw_lo, raw_hi = write_limits(p, self._driver_cls(p))
        if hi is not None and value > hi + 1e-9 * abs(hi):
            raise PointError(f"{_num(value)}{unit} is above the maximum {_num(hi)}{unit} for this point"
                             + (f" (raw register limit {_num(raw_hi)})" if raw_hi is not None else ""))
        if lo is not None and value < lo - 1e-9 * abs(lo):
            raise PointError(f"{_num(value)}{unit} is below the minimum {_num(lo)}{unit} for this point"
                             + (f" (raw register limit {_num(raw_lo)})" if raw_lo is not None else ""))
        try:
            out = p.convert_out(value)
        except (ValueError, TypeError, OverflowError, ZeroDivisionError) as e:
            raise PointError(f"{_num(value)}{unit} cannot be converted for the device: {e}") from None
        if isinstance(out, float) and not math.isfinite(out):
            raise PointError(f"{_num(value)}{unit} is out of range for this point "
                             "(not a finite number after scale/offset)")
        return value

    # ------------------------------------------------------------------ the write
    async def write(self, point_id: str, value: Any, *, priority: int = 16, actor: str = "unknown") -> dict:
        """Command ``value`` at ``priority`` on ``point_id`` (``None`` relinquishes).

        Returns the outcome dict. Raises :class:`PointError` for a request refused
        before anything changed, :class:`gatewayd.plugin.WriteError` when the driver
        refused (array restored) or could not confirm (command kept, re-sent later).
        Every outcome is audited with ``actor``.
        """
        action = "points.write" if value is not None else "points.relinquish"
        try:
            p = self.gw.points.get(point_id)
            if not p.cfg.writable:
                raise PointError(f"point {point_id!r} is not writable (set writable = true in its table)")
            if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 16:
                raise PointError(f"priority must be an integer 1..16, got {priority!r}")
            value = self.check_value(p, value)
        except PointError as e:
            self.stats["refused"] += 1
            await self.gw.audit(actor, action, point_id, {"value": _jsonable(value), "priority": _jsonable(priority),
                                                          "error": str(e), "refused": "request"}, ok=False)
            log.warning("%s: %s %s refused: %s", actor, action, point_id, e, extra={"POINT": point_id})
            raise
        fields = {"DRIVER": p.cfg.driver, "DEVICE": p.cfg.device, "POINT": point_id}
        async with p.write_lock:
            before = p.pa.slots[priority - 1]
            p.pa.set(priority, value)
            try:
                await self.gw.state.set_priority(point_id, priority, value)
            except BaseException:  # not persisted (disk full, cancelled): memory stays what state.db says
                p.pa.slots[priority - 1] = before
                log.error("%s: the command for %s could not be stored; nothing was sent", actor, point_id,
                          exc_info=True, extra=fields)
                raise
            eff, level = p.pa.effective()
            detail: dict[str, Any] = {"value": value, "priority": priority, "effective": eff, "active_level": level}
            wait = self._min_time_left(p)
            if wait > 0:
                # write_min_time: the command is kept and sent when the interval is over
                self.stats["deferred"] += 1
                self._deferred.setdefault(point_id, {}).setdefault(priority, (before, actor))
                self._schedule(p, "command", trio.current_time() + wait)
                p.write_status, p.write_error = "pending", f"sent in {wait:.1f}s (write_min_time)"
                detail.update(pending=True, send_in=round(wait, 3))
                await self.gw.audit(actor, action, point_id, detail, ok=True)
                log.info("%s wrote %s = %r at priority %d (effective %r), sent in %.1fs (write_min_time)",
                         actor, point_id, value, priority, eff, wait, extra=fields)
                return {"point": point_id, **detail}
            err, readback = await self._send(p, levels={priority})
            ts = self.gw.points.wall()
            if err is None:
                detail["readback"] = p.value
            elif err.kept:
                self._schedule(p, "retry", trio.current_time() + RETRY_AFTER)
                detail.update(readback=None, kept=True, error=str(err), kind=err.kind)
            else:
                p.pa.slots[priority - 1] = before
                await self.gw.state.set_priority(point_id, priority, before)
                eff, level = p.pa.effective()
                detail.update(readback=None, restored=True, error=str(err), kind=err.kind,
                              effective=eff, active_level=level)
            await self.gw.audit(actor, action, point_id, detail, ok=err is None)
            self.gw.bus.publish(WriteCompleted(ts, point_id, p.cfg.device, p.cfg.driver, value, priority, actor,
                                               eff, err is None, None if err is None else str(err)))
            if err is not None:
                if err.kept:
                    msg = (f"write to {point_id} not confirmed: {err}; the command stays at priority {priority} "
                           f"and is sent again when the device answers")
                else:
                    msg = (f"write to {point_id} refused: {err}; the priority array is unchanged "
                           f"(effective {eff!r}" + (f" at priority {level})" if level else ", relinquish default)"))
                log.warning("%s: %s", actor, msg, extra=fields)
                raise WriteError(msg, kind=err.kind)
            log.info("%s wrote %s = %r at priority %d (effective %r)", actor, point_id, value, priority, eff,
                     extra=fields)
            return {"point": point_id, **detail}

    async def _send(self, p: PointState, *, levels: set[int] | None = None) -> tuple[Any, Any]:
        """Call the driver for ``p`` (caller holds ``p.write_lock``); returns ``(error, readback)``.

        Drivers with ``write_priority`` get each level of ``levels`` (all non-null
        levels when ``None``); others get the effective value. The write status,
        read-back ingestion and command tracking are updated here.
        """
        pid = p.cfg.id
        runner = self.gw.drivers.get(p.cfg.driver)
        inst = runner.instance if runner and runner.state == "running" else None
        eff, _level = p.pa.effective()
        readback = None
        err: WriteError | None = None
        sent = None
        self._last_sent[pid] = trio.current_time()
        try:
            if inst is None:
                raise WriteError(f"driver {p.cfg.driver!r} is not running" + (f" ({runner.state})" if runner else ""),
                                 kind="unavailable")
            with trio.fail_after(WRITE_TIMEOUT):
                if supports(inst, PRIORITY_ARRAY):
                    lv = sorted(levels) if levels is not None else \
                        [i + 1 for i, v in enumerate(p.pa.slots) if v is not None]
                    for lvl in lv:
                        readback = await inst.write_priority(p.cfg, p.convert_out(p.pa.slots[lvl - 1]), lvl)
                elif eff is not None:
                    sent = p.convert_out(eff)
                    readback = await inst.write(p.cfg, sent)
        except trio.TooSlowError:
            err = WriteError(f"driver did not finish the write within {WRITE_TIMEOUT:g}s", kind="timeout")
        except WriteError as e:
            err = e if e.kind in WriteError.KINDS else WriteError(str(e), kind="refused")
        except Exception as e:
            log.error("write to %s failed in the driver", pid, exc_info=True,
                      extra={"DRIVER": p.cfg.driver, "DEVICE": p.cfg.device, "POINT": pid})
            err = WriteError(f"{type(e).__name__}: {e}", kind="refused")
        ts = self.gw.points.wall()
        if err is None:
            p.write_status, p.write_error = "ok", None
            self._due.pop(pid, None)
            self._reason.pop(pid, None)
            self._deferred.pop(pid, None)
            expect = readback if readback is not None else sent
            if p.overridden:
                p.overridden = False  # a confirmed write is what the device holds now
                if p.flags:
                    p.flags = tuple(f for f in p.flags if f != "overridden")
            if readback is not None:
                self.gw.points.ingest(pid, readback, ts)
            elif sent is not None:
                self.gw.points.ingest(pid, sent, ts)
            commanded = self._has_command(p) and not supports(inst, PRIORITY_ARRAY)
            p.track_command(expect if commanded else None)
            if p.cfg.write_max_time > 0:
                self._schedule(p, "max_time", trio.current_time() + p.cfg.write_max_time)
        else:
            p.write_status = "pending" if err.kept else "fault"
            p.write_error = str(err)
            if err.kept:
                p.track_command(None)
        return err, readback

    # ------------------------------------------------------------------ tuning
    def _min_time_left(self, p: PointState) -> float:
        mt = p.cfg.write_min_time
        last = self._last_sent.get(p.cfg.id)
        if mt <= 0 or last is None:
            return 0.0
        return max(0.0, last + mt - trio.current_time())

    def _schedule(self, p: PointState, reason: str, at: float) -> None:
        pid = p.cfg.id
        at = max(at, trio.current_time() + self._min_time_left(p))
        cur = self._due.get(pid)
        if cur is None or at < cur or self._reason.get(pid) == "max_time":
            self._due[pid] = at
            if self._reason.get(pid) not in ("command",):
                self._reason[pid] = reason
        self._wake.set()

    @staticmethod
    def _has_command(p: PointState) -> bool:
        """Whether some level of ``p``'s array holds a command (what write tuning re-sends)."""
        return any(v is not None for v in p.pa.slots)

    def _device_opened(self, device_id: str, reason: str) -> None:
        """A driver reported ``device_id`` reachable: first time since it started
        (``start``) or again after failures (``open``). Called on the driver's task."""
        for p in self.gw.points.by_device.get(device_id, ()):
            cfg = p.cfg
            if not cfg.writable or not (cfg.write_on_start if reason == "start" else cfg.write_on_open):
                continue
            if not self._has_command(p):
                continue
            p.track_command(None)  # readings until the re-send are the device's own
            self._schedule(p, reason, trio.current_time())

    def _on_override(self, p: PointState, overridden: bool, raw: Any) -> None:
        eff, level = p.pa.effective()
        try:
            actual = p.convert_in(raw)
        except (ValueError, TypeError, OverflowError):
            actual = raw
        fields = {"DRIVER": p.cfg.driver, "DEVICE": p.cfg.device, "POINT": p.cfg.id}
        if overridden:
            self.stats["overridden"] += 1
            log.warning("%s is overridden at the device: commanded %r (priority %s), reads %r", p.cfg.id, eff,
                        level or "default", actual, extra=fields)
        else:
            log.info("%s agrees with its command again (%r)", p.cfg.id, actual, extra=fields)
        self.gw.bus.publish(WriteOverridden(self.gw.points.wall(), p.cfg.id, p.cfg.device, p.cfg.driver, eff,
                                            actual, level, overridden))

    async def _resend(self, pid: str) -> None:
        p = self.gw.points.points.get(pid)
        reason = self._reason.pop(pid, "?")
        self._due.pop(pid, None)
        deferred = self._deferred.pop(pid, None) if reason == "command" else None
        levels = set(deferred) if deferred else None
        if p is None or not p.cfg.writable or not p.cfg.enabled:
            return
        if p.device.conn_status in ("down", "fault", "disabled") and reason != "command":
            # the next success of the device (write_on_open) or a retry sends it
            if reason in ("retry", "max_time") or not p.cfg.write_on_open:
                self._schedule(p, reason, trio.current_time() + RETRY_AFTER)
            return
        fields = {"DRIVER": p.cfg.driver, "DEVICE": p.cfg.device, "POINT": pid}
        async with p.write_lock:
            if not self._has_command(p) and not levels:
                return
            eff, level = p.pa.effective()
            previous = p.write_error
            err, _rb = await self._send(p, levels=levels)
            if err is not None and not err.kept and deferred:
                # a deferred command the device refuses: its levels go back to what they were
                for lvl, (before, who) in deferred.items():
                    p.pa.slots[lvl - 1] = before
                    await self.gw.state.set_priority(pid, lvl, before)
                    await self.gw.audit(who, "points.write", pid, {"priority": lvl, "restored": True,
                                                                   "error": str(err), "kind": err.kind,
                                                                   "deferred": True}, ok=False)
                eff, level = p.pa.effective()
        actor = "write-tuning"
        if err is None:
            self.stats["resent"] += 1
            log.info("write tuning (%s): sent %s = %r (priority %s)", reason, pid, eff, level or "default",
                     extra=fields)
        else:
            self.stats["resend_failed"] += 1
            # a retry that fails the same way again (a driver that stays stopped) is not news
            log.log(logging.DEBUG if str(err) == previous else logging.WARNING,
                    "write tuning (%s): %s = %r not sent: %s", reason, pid, eff, err, extra=fields)
            if err.kept:
                self._schedule(p, "retry", trio.current_time() + RETRY_AFTER)
        self.gw.bus.publish(WriteCompleted(self.gw.points.wall(), pid, p.cfg.device, p.cfg.driver, eff, level,
                                           actor, eff, err is None, None if err is None else str(err)))

    async def _resend_all(self, pids: list[str]) -> None:
        for pid in pids:
            try:
                await self._resend(pid)
            except Exception:  # one point's surprise must not stop write tuning
                log.error("write tuning of %s failed", pid, exc_info=True)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write tuning: send what is due (start/open/max_time/min_time/retries) until cancelled."""
        task_status.started()
        while True:
            self._wake = trio.Event()
            now = trio.current_time()
            due = sorted((t, pid) for pid, t in self._due.items() if t <= now)
            if due:
                # one task per device, so a device that is slow to answer holds back only its own points
                by_device: dict[str, list[str]] = {}
                for _t, pid in due:
                    by_device.setdefault(pid.split("/", 1)[0], []).append(pid)
                async with trio.open_nursery() as n:
                    for pids in by_device.values():
                        n.start_soon(self._resend_all, pids)
                continue
            nxt = min(self._due.values(), default=math.inf)
            with trio.move_on_at(nxt):
                await self._wake.wait()

    def status(self) -> dict:
        """Figures for ``gateway.status``: re-sends, deferrals, refusals, overrides, pending."""
        return {**self.stats, "pending": sum(1 for r in self._reason.values() if r != "max_time"),
                "scheduled": len(self._due)}


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    return repr(v)
