"""Everything a plugin author imports from gatewayd, in one place.

A driver plugin in ~20 lines::

    import trio
    from gatewayd.plugin import Driver, hookimpl, Schema, Key, Str, Duration

    class EchoDriver(Driver):
        settings_schema = Schema({"interval": Key(Duration(min=0.1), 1.0)})

        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
            task_status.started()
            while True:
                for dev in self.config.devices.values():
                    for p in dev.points.values():
                        self.sink.update(p.id, 42)
                await trio.sleep(self.config.settings["interval"])

    @hookimpl
    def gatewayd_register(registry):
        registry.add_driver("echo", EchoDriver)

Rules of the house (see ``gatewayd/hookspecs.py`` and ARCHITECTURE.md):

* report values and status only through ``self.sink`` (:class:`PointSink`);
* no threads, no event loops of your own: blocking calls go through
  ``trio.to_thread``, asyncio libraries through ``await self.ctx.asyncio()``;
* ``run()`` calls ``task_status.started()`` as soon as it is set up — before
  waiting on any device — and runs until cancelled; raising restarts the
  instance with backoff (other drivers are not disturbed);
* persistent driver state goes to ``self.ctx.kv_*`` (state.db), discoveries to
  ``await self.ctx.report_discovery(...)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

import pluggy
import trio

from .config import (REQUIRED, AnyValue, Bool, ConnectorConfig, DeviceConfig, DriverConfig, Duration, Enum,
                     Float, Int, Key, List, Map, PointConfig, Schema, SecretStr, Size, Str, Table)
from .events import (DeviceDown, DeviceRecovered, DeviceStatusChanged, DriverEvent, Event, StatusChanged,
                     ValueChanged, WriteCompleted)
from .points import DeviceHealth, PointError, PointSink

if TYPE_CHECKING:  # pragma: no cover
    from .daemon import Gateway

hookimpl = pluggy.HookimplMarker("gatewayd")
"""Marker for hook implementations in a plugin module (``@hookimpl``)."""

__all__ = [
    "hookimpl", "Driver", "Connector", "DriverContext", "ConnectorContext", "WriteError",
    "PointSink", "DeviceHealth", "PointError",
    "Schema", "Key", "REQUIRED", "Str", "SecretStr", "Int", "Float", "Bool", "Duration", "Size", "Enum",
    "List", "Table", "Map", "AnyValue",
    "PointConfig", "DeviceConfig", "DriverConfig", "ConnectorConfig",
    "Event", "ValueChanged", "StatusChanged", "DeviceStatusChanged", "DeviceDown", "DeviceRecovered",
    "WriteCompleted", "DriverEvent",
]


class WriteError(Exception):
    """A write did not happen; the message is shown to the operator and audited.

    ``kind`` says what the core does with the command (see ``gatewayd/writes.py``):

    ==============  ==========================================================  ===================
    kind            meaning                                                     priority array
    ==============  ==========================================================  ===================
    ``refused``     the device said no (Modbus exception 01..04, BACnet         restored as before
                    Error/Reject/Abort, write-access-denied, out of range)
    ``encode``      the value cannot be encoded for the register/type           restored as before
    ``invalid``     a bad request (read-only point, unknown device ...)         restored as before
    ``timeout``     no answer in time: the device may have applied it           kept, re-sent
    ``transport``   the link is down                                            kept, re-sent
    ``unavailable`` the driver is not running                                   kept, re-sent
    ==============  ==========================================================  ===================

    Any other kind (older drivers say ``"exception"`` or nothing) counts as ``refused``.
    """

    KINDS = ("refused", "encode", "invalid", "timeout", "transport", "unavailable")
    #: kinds after which the command stays in the priority array (the device may never have seen it)
    KEEP = ("timeout", "transport", "unavailable")

    def __init__(self, message: str, *, kind: str = "refused") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def kept(self) -> bool:
        """True when the command stays in the priority array (timeout/transport/unavailable)."""
        return self.kind in self.KEEP


class _Logger(logging.LoggerAdapter):
    """Adds journal fields (DRIVER/CONNECTOR, DEVICE, POINT) to every record."""

    def process(self, msg, kwargs):
        extra = dict(self.extra)
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


class _Context:
    def __init__(self, gateway: "Gateway", kind: str, id: str) -> None:
        self.gateway = gateway
        self.id = id
        self._ns = f"{kind}:{id}"
        self.log = _Logger(logging.getLogger(f"gatewayd.{kind}.{id}"),
                           {"DRIVER" if kind == "driver" else "CONNECTOR": id})

    @property
    def gateway_id(self) -> str:
        return self.gateway.config.gateway.id

    async def asyncio(self):
        """The core's one asyncio bridge (:class:`gatewayd.aio.AsyncioBridge`), started on first use."""
        return await self.gateway.asyncio_bridge()

    # persistent key/value state of this instance (state.db), e.g. learned refused register ranges
    async def kv_set(self, key: str, value: Any) -> None:
        await self.gateway.state.kv_set(self._ns, key, value)

    def kv_get(self, key: str, default: Any = None) -> Any:
        return self.gateway.state.kv_get(self._ns, key, default)

    def kv_items(self, prefix: str = "") -> list:
        return self.gateway.state.kv_items(self._ns, prefix)

    async def kv_delete(self, key: str | None = None) -> None:
        await self.gateway.state.kv_delete(self._ns, key)

    def emit(self, name: str, device: str | None = None, **data: Any) -> None:
        """Publish a protocol-specific :class:`DriverEvent` (recorded and forwarded like any event)."""
        self.gateway.bus.publish(DriverEvent(self.gateway.points.wall(), self.id, device, name, data))


class DriverContext(_Context):
    """What a driver instance gets: its config, its sink, its log, the gateway."""

    def __init__(self, gateway: "Gateway", config: DriverConfig) -> None:
        super().__init__(gateway, "driver", config.id)
        self.config = config
        self.sink = PointSink(gateway.points, config.id)

    def device_log(self, device_id: str) -> logging.LoggerAdapter:
        return _Logger(self.log.logger, {"DRIVER": self.id, "DEVICE": device_id})

    def write_lock(self, device_id: str, key: Any = None) -> trio.Lock:
        """The gateway-wide lock of ``(device_id, key)`` for read-modify-write sequences.

        Hold it from the read to the write of a shared register (e.g. two bit points of
        one Modbus holding register, FC3 + FC6 when the device has no FC22), so that two
        concurrent writes cannot lose one another's bits::

            async with self.ctx.write_lock(point.device, ("hr", address)):
                reg = await read(address)
                await write(address, (reg & and_mask) | or_mask)

        ``key`` narrows the lock (a register address); ``None`` locks the whole device.
        The same arguments give the same lock for the life of the gateway (across driver
        restarts and reloads). The core does not hold it around ``write()``: take it only
        in the driver, and never nest two of them.
        """
        return self.gateway.writer.device_lock(device_id, key)

    async def report_discovery(self, key: str, data: dict) -> None:
        """Record a discovered device (a re-scan keeps an earlier accept/ignore decision)."""
        await self.gateway.state.discovery_upsert(self.id, key, data)

    def discovery_get(self, key: str) -> dict | None:
        """This driver's discovery entry ``key`` (status, data, first/last seen), or None."""
        for row in self.gateway.state.discovery_list(driver=self.id):
            if row["key"] == key:
                return row
        return None

    async def discovery_status(self, key: str, status: str) -> None:
        """Set an entry's status: discovered, accepted, ignored or stale."""
        await self.gateway.state.discovery_set_status(self.id, key, status)


class ConnectorContext(_Context):
    """What a connector instance gets: its config, its outbox cursor, the gateway."""

    def __init__(self, gateway: "Gateway", config: ConnectorConfig) -> None:
        super().__init__(gateway, "connector", config.id)
        self.config = config

    @property
    def cursor(self):
        """This instance's persisted outbox cursor (:class:`gatewayd.store.OutboxCursor`)."""
        return self.gateway.outbox_cursor(self.id)

    async def open_cursor(self, start: str = "head"):
        """Like :attr:`cursor`, but creates a new cursor off the trio thread (no blocking write)."""
        if self.gateway.outbox is None:
            raise RuntimeError("the outbox is not open")
        return await self.gateway.outbox.open_cursor(self.id, start)

    def points(self) -> list[dict]:
        """Snapshots of every configured point (id, device, driver, kind, unit, value, status, tags ...)."""
        return [p.snapshot() for p in self.gateway.points.points.values()]

    def decode(self, entry) -> dict:
        """Turn an outbox entry into an event dict (``kind``, ``ts``, ``point``/``device``, ``value`` ...)."""
        return self.gateway.decode_entry(entry)

    def point_info(self, point_id: str) -> dict | None:
        """Unit, tags, device, driver, kind of a point (None if it no longer exists)."""
        p = self.gateway.points.points.get(point_id)
        return None if p is None else p.snapshot()

    async def write_point(self, point_id: str, value: Any, *, priority: int = 16, actor: str | None = None) -> dict:
        """``points.write`` on behalf of this connector (actor ``<type>:<id>`` by default)."""
        return await self.gateway.write_point(point_id, value, priority=priority,
                                              actor=actor or f"{self.config.type}:{self.id}")


class Driver:
    """Base class of driver types (subclass, then ``registry.add_driver(name, cls)``).

    Class attributes ``settings_schema``, ``device_schema`` and ``point_schema``
    (:class:`Schema`) declare the keys a driver accepts in ``[drivers.<id>]``,
    ``[drivers.<id>.devices.<id>]`` and in each point table (the point's
    ``binding``); everything else is an error at ``check-config`` time.
    """

    settings_schema: Schema | None = None
    device_schema: Schema | None = None
    point_schema: Schema | None = None

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.config: DriverConfig = ctx.config
        self.sink: PointSink = ctx.sink
        self.log = ctx.log

    @classmethod
    def expand_points(cls, driver_id: str, device_id: str, settings: dict) -> dict[str, dict]:
        """Points this device gets without listing them (e.g. from a profile); raise ValueError on problems."""
        return {}

    @classmethod
    def validate_config(cls, config: DriverConfig) -> Iterable[tuple[tuple[str, ...], str]]:
        """Cross-key checks after schema validation: yield ``(key_path, message)``."""
        return ()

    @classmethod
    def write_range(cls, point: PointConfig) -> tuple[float | None, float | None]:
        """The lowest and highest value ``write()`` can take for ``point``, in driver-value
        space (after the inverse scale/convert), e.g. ``(0, 65535)`` for a Modbus uint16
        register; ``None`` for an open end. The core maps it to the point's units through
        its scale/offset and refuses writes outside it (with the point's ``min``/``max``)
        before the driver sees them. The default is unbounded."""
        return (None, None)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Poll/subscribe until cancelled. Call ``task_status.started()`` once set up."""
        raise NotImplementedError

    async def write(self, point: PointConfig, value: Any) -> Any:
        """Write ``value`` (device units, after inverse scale/convert) and return the
        read-back raw value, or ``None`` if the protocol gives none. Raise
        :class:`WriteError` with the right ``kind`` on failure (a refusal restores the
        priority array; a timeout or link error keeps the command for a re-send)."""
        raise WriteError(f"driver type of {self.config.id!r} does not support writes", kind="invalid")

    async def reloaded(self) -> None:
        """Called after a configuration reload (SIGHUP, ``config.reload``) that kept
        this instance running because its configuration did not change. Drop
        state a reload is meant to reset (e.g. learned refusals); the default does
        nothing. An exception is logged and does not fail the reload."""

    # Optional: ``async def write_priority(self, point, value_or_None, priority) -> readback``.
    # When a driver defines it, ``points.write`` passes the *requested* value and
    # priority straight through (``None`` relinquishes that level on the device)
    # instead of the effective value: for protocols whose devices keep their own
    # priority array (BACnet), the device stays authoritative.

    async def discover(self, **params: Any) -> dict:
        """User-initiated discovery (``discovery.scan``); report findings with
        ``ctx.report_discovery`` and return a summary dict."""
        raise WriteError(f"driver {self.config.id!r} has no discovery")

    def accept_discovered(self, key: str, data: dict) -> tuple[str, dict]:
        """Turn a discovered entry into ``(device_id, device_table)`` for the TOML."""
        raise WriteError(f"driver {self.config.id!r} cannot accept discovered devices")

    def status(self) -> dict:
        """Driver-specific figures for ``drivers.list`` (requests, errors, ...)."""
        return {}


class Connector:
    """Base class of connector types (``registry.add_connector(name, cls)``).

    A connector reads its own outbox cursor (``self.ctx.cursor``) and advances it
    only after the upstream acknowledged; it never subscribes to the bus for data
    it must not lose.
    """

    settings_schema: Schema | None = None

    def __init__(self, ctx: ConnectorContext) -> None:
        self.ctx = ctx
        self.config: ConnectorConfig = ctx.config
        self.log = ctx.log

    @classmethod
    def validate_config(cls, config: ConnectorConfig) -> Iterable[tuple[tuple[str, ...], str]]:
        return ()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def reloaded(self) -> None:
        """Called after a configuration reload (SIGHUP, ``config.reload``) that kept
        this instance running because its configuration did not change. Drop
        state a reload is meant to reset (e.g. learned refusals); the default does
        nothing. An exception is logged and does not fail the reload."""

    async def drain(self) -> None:
        """Shutdown grace: called once at a stop, after the drivers stopped and
        the recorder committed every accepted event, concurrently with the other connectors'.

        Send what is still in the outbox (up to the head) and return once done; stop taking
        new commands. ``run()`` keeps running meanwhile. The daemon cancels the connector when
        ``drain()`` returns or when what remains of ``[gateway] shutdown_grace`` has passed,
        whichever comes first. The default returns at once.
        """

    def status(self) -> dict:
        """Connection state, last error ... for ``connectors.status``."""
        return {}
