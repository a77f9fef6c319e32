"""Writes in the ``bacnet`` driver: WriteProperty at a priority (NULL relinquishes), read-back,
and reading a point's priority array."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from gatewayd.plugin import WriteError

from .config import norm_objid
from .stack import BacnetError

if TYPE_CHECKING:
    from .device import _Dev

def write_error_kind(e: BacnetError) -> str:
    """The :class:`WriteError` kind of a failed WriteProperty: the device's
    Error/Reject/Abort is "refused" (nothing was applied), a value we could not encode
    "encode", no answer "timeout" (it may have been applied), a socket failure "transport"."""
    return {"timeout": "timeout", "transport": "transport", "invalid": "encode"}.get(e.kind, "refused")



class WritesMixin:
    """The write path; part of :class:`~.driver.BacnetDriver`."""

    def _dev_of(self, point) -> _Dev:
        d = self.devs.get(point.device)
        if d is None:
            raise WriteError(f"{point.id}: unknown device {point.device!r}", kind="invalid")
        if d.address is None:
            raise WriteError(f"{point.id}: device {d.instance} has not been found on network {d.network} yet",
                             kind="unavailable")
        return d

    async def write_priority(self, point, value, priority):
        """WriteProperty at ``priority`` (``None`` writes NULL: relinquish that level), then read back."""
        d = self._dev_of(point)
        b = point.binding
        oid = norm_objid(b["object"])
        stack = self.stacks[d.network]
        if isinstance(value, float) and point.kind == "multistate":
            value = int(value)
        try:
            await self.aio.run(partial(stack.write, d.address, oid, b["property"], value, priority, b.get("index")))
            d.requests += 1
        except BacnetError as e:
            raise WriteError(f"{point.id}: {e}", kind=write_error_kind(e)) from None
        try:
            return await self.aio.run(stack.read, d.address, oid, b["property"], b.get("index"))
        except BacnetError as e:
            self.ctx.device_log(d.id).warning("read-back of %s failed after the write (%s)", point.id, e)
            return value

    async def write(self, point, value):
        """A write without a priority: the point's ``priority``, else the device's ``write_priority``."""
        d = self._dev_of(point)
        prio = point.binding.get("priority") or d.s["write_priority"]
        return await self.write_priority(point, value, prio)

    async def read_priority_array(self, point) -> dict:
        d = self._dev_of(point)
        oid = norm_objid(point.binding["object"])
        res = await self._rpm_or_rp(d, [(oid, ["priority-array", "relinquish-default", "present-value"])])
        got = {prop: (v, err) for _o, prop, _i, v, err in res}
        pa, err = got.get("priority-array", (None, "missing"))
        if err is not None:
            raise BacnetError("error", f"{oid} has no priority array ({err})")
        slots = {str(i + 1): v for i, v in enumerate(pa)}
        active = next((i + 1 for i, v in enumerate(pa) if v is not None), None)
        return {"point": point.id, "object": oid, "slots": slots,
                "relinquish_default": got.get("relinquish-default", (None, None))[0],
                "present_value": got.get("present-value", (None, None))[0], "active_level": active}
