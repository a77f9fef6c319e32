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

A plugin imports nothing else from gatewayd (tests also use :mod:`gatewayd.testing`);
``docs/plugins.md`` is the guide. Rules of the house (see ``gatewayd/hookspecs.py``):

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
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, runtime_checkable

import pluggy
import trio

from . import native
from .aio import AsyncioBridge, AsyncioCancelled, AsyncioChannel, BridgeClosed
from .bus import Bus
from .config import (REQUIRED, AnyValue, Bool, Config, ConnectorConfig, DeviceConfig, DriverConfig, Duration, Enum,
                     Float, Int, Key, List, Map, PointConfig, Schema, SecretStr, Size, Str, Table)
from .events import (DeviceDown, DeviceRecovered, DeviceStatusChanged, DriverEvent, Event, StatusChanged,
                     ValueChanged, WriteCompleted)
from .points import DeviceHealth, PointError, PointSink, PointTable
from .rpc import (AUDIT, CONFLICT, INVALID_PARAMS, LIMIT_EXCEEDED, NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE, Call,
                  MethodRegistry, Role, RpcError)
from .store import Entry, OutboxCursor

if TYPE_CHECKING:  # pragma: no cover
    from .plugins import PluginRegistry
    from .store import HistoryStore, Outbox, StateStore

log = logging.getLogger("gatewayd.plugin")

hookimpl = pluggy.HookimplMarker("gatewayd")
"""Marker for hook implementations in a plugin module (``@hookimpl``)."""

__all__ = [
    # hooks, base classes, contexts, the gateway
    "hookimpl", "Driver", "Connector", "DriverContext", "ConnectorContext", "GatewayAPI", "RunnerInfo",
    # driver capabilities
    "PRIORITY_ARRAY", "DISCOVERY", "DIAGNOSTICS", "CAPABILITIES", "supports",
    # writes and values
    "WriteError", "PointSink", "DeviceHealth", "PointError",
    # settings schemas
    "Schema", "Key", "REQUIRED", "Str", "SecretStr", "Int", "Float", "Bool", "Duration", "Size", "Enum",
    "List", "Table", "Map", "AnyValue",
    # configuration model
    "PointConfig", "DeviceConfig", "DriverConfig", "ConnectorConfig",
    # events
    "Event", "ValueChanged", "StatusChanged", "DeviceStatusChanged", "DeviceDown", "DeviceRecovered",
    "WriteCompleted", "DriverEvent",
    # JSON-RPC methods of a plugin
    "RpcError", "Role", "MethodRegistry", "Call", "AUDIT", "INVALID_PARAMS", "NOT_FOUND", "CONFLICT",
    "UNAVAILABLE", "LIMIT_EXCEEDED", "PERMISSION_DENIED",
    # asyncio libraries
    "AsyncioBridge", "AsyncioChannel", "AsyncioCancelled", "BridgeClosed",
    # connectors: the outbox
    "OutboxCursor", "Entry",
    # native protocol helpers (CRC, RTU framing, register codec, read planner, MS/TP)
    "native",
]

#: Driver capability: the device keeps its own priority array; ``write_priority(point, value_or_None,
#: priority)`` receives the requested level (``None`` relinquishes it) instead of the effective value.
PRIORITY_ARRAY = "priority_array"
#: Driver capability: ``discover(**params)`` and ``accept_discovered(key, data)`` work (``discovery.*`` RPC).
DISCOVERY = "discovery"
#: Driver capability: the plugin adds diagnostic RPC methods (raw reads, statistics) for its driver instances.
DIAGNOSTICS = "diagnostics"
#: Every capability name the core knows.
CAPABILITIES = frozenset({PRIORITY_ARRAY, DISCOVERY, DIAGNOSTICS})

# capability -> the method whose presence (or override) older plugins used to signal it
_LEGACY_PROBES = {PRIORITY_ARRAY: "write_priority", DISCOVERY: "discover"}
_warned: set[tuple[type, str]] = set()


def supports(driver: Any, capability: str) -> bool:
    """True when ``driver`` (an instance or a :class:`Driver` subclass) has ``capability``.

    A driver declares what it can do in its class attribute ``capabilities``
    (e.g. ``frozenset({PRIORITY_ARRAY, DISCOVERY})``); the core asks this function,
    never ``hasattr``. For drivers written before capabilities existed, a driver
    that declares none but defines ``write_priority`` (or overrides ``discover``)
    still counts, and one deprecation line per class and capability is logged.
    A class that sets ``capabilities`` (even to an empty set) is never probed.
    """
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown driver capability {capability!r} (known: {', '.join(sorted(CAPABILITIES))})")
    cls = driver if isinstance(driver, type) else type(driver)
    declared = getattr(cls, "capabilities", None)
    if declared is not None and declared is not Driver.capabilities:  # the class (or a base) declares them
        return capability in declared
    probe = _LEGACY_PROBES.get(capability)
    if probe is None:
        return False
    impl = getattr(cls, probe, None)
    found = impl is not None and impl is not getattr(Driver, probe, None)
    if found and (cls, capability) not in _warned:
        _warned.add((cls, capability))
        log.warning("driver type %s.%s defines %s() but declares no capabilities; add "
                    "capabilities = frozenset({%r}) to the class (the method probe is deprecated)",
                    cls.__module__, cls.__qualname__, probe, capability)
    return found


@runtime_checkable
class RunnerInfo(Protocol):
    """One supervised driver or connector instance, as :attr:`GatewayAPI.drivers` lists it."""

    id: str
    cfg: Any  #: its :class:`DriverConfig` or :class:`ConnectorConfig`
    instance: Any  #: the running :class:`Driver`/:class:`Connector`, or None between restarts
    state: str  #: starting, running, backoff, stopped or disabled
    last_error: str | None

    def info(self) -> dict:
        """The ``drivers.list`` / ``connectors.status`` row of this instance."""
        ...


@runtime_checkable
class GatewayAPI(Protocol):
    """What plugins, RPC methods, backups and the recorder may ask of the running gateway.

    The daemon's gateway implements it; plugin code receives it as ``ctx.gateway``
    and as the ``gateway`` argument of the ``gatewayd_rpc_methods`` hook, and should
    prefer the narrower context methods (``ctx.kv_*``, ``ctx.write_point`` ...).
    Everything here is called on the trio thread.
    """

    config: Config  #: the configuration in force (replaced by a reload)
    points: PointTable  #: every point's state, by id (``points.get(id)``, ``points.select(...)``)
    bus: Bus  #: live events (``bus.subscribe()``); lossy for slow readers, use the outbox for data
    registry: "PluginRegistry"  #: the loaded plugins and their driver/connector types
    drivers: Mapping[str, RunnerInfo]  #: driver instances by id
    connectors: Mapping[str, RunnerInfo]  #: connector instances by id
    state: "StateStore | None"  #: state.db: key-value store, priority arrays, discovery records, audit
    history: "HistoryStore | None"  #: history.db (None when history is off)
    outbox: "Outbox | None"  #: outbox.db: what connectors read with their cursors
    ready: trio.Event  #: set once every instance started (or reported its failure)
    stopping: trio.Event  #: set when a stop was requested
    reloads: int  #: number of configuration reloads applied

    def driver_instance(self, type_name: str | None = None, driver_id: str | None = None) -> Any:
        """The running driver ``driver_id`` (or the only one of ``type_name``); raises :class:`RpcError`."""
        ...

    async def write_point(self, point_id: str, value: Any, *, priority: int = 16, actor: str = "unknown") -> dict:
        """The one write path (checks, priority array, driver, read-back, audit, event)."""
        ...

    def write_lock(self, device_id: str, key: Any = None) -> trio.Lock:
        """The gateway-wide read-modify-write lock of ``(device_id, key)``."""
        ...

    async def audit(self, actor: str, action: str, target: str, detail: dict, ok: bool = True) -> None:
        """Add an audit entry (never raises: a failure is logged)."""
        ...

    async def asyncio_bridge(self) -> AsyncioBridge:
        """The process's one asyncio bridge, started on first use."""
        ...

    def outbox_cursor(self, name: str) -> OutboxCursor:
        """The persisted outbox cursor ``name`` (created at the head when new)."""
        ...

    def decode_entry(self, entry: Entry) -> dict:
        """An outbox entry as an event dict."""
        ...

    async def reload(self, source: str = "SIGHUP") -> dict:
        """Re-read, validate and apply the configuration; returns what changed or why it was refused."""
        ...

    def status(self) -> dict:
        """The ``gateway.status`` figures."""
        ...


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
    """What both contexts offer: the gateway, a logger, persistent key/value state, events."""

    def __init__(self, gateway: GatewayAPI, kind: str, id: str) -> None:
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

    def __init__(self, gateway: GatewayAPI, config: DriverConfig) -> None:
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
        return self.gateway.write_lock(device_id, key)

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

    def __init__(self, gateway: GatewayAPI, config: ConnectorConfig) -> None:
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
    #: Optional abilities the core may use (:data:`PRIORITY_ARRAY`, :data:`DISCOVERY`,
    #: :data:`DIAGNOSTICS`); checked with :func:`supports`, never by probing for methods.
    capabilities: frozenset[str] = frozenset()
    _gatewayd_kind = "driver"  # lets the plugin manager check types without importing this module

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

    # With the capability PRIORITY_ARRAY the driver also defines
    # ``async def write_priority(self, point, value_or_None, priority) -> readback``:
    # ``points.write`` then passes the *requested* value and priority straight through
    # (``None`` relinquishes that level on the device) instead of the effective value:
    # for protocols whose devices keep their own priority array (BACnet), the device
    # stays authoritative.

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
    _gatewayd_kind = "connector"  # lets the plugin manager check types without importing this module

    def __init__(self, ctx: ConnectorContext) -> None:
        self.ctx = ctx
        self.config: ConnectorConfig = ctx.config
        self.log = ctx.log

    @classmethod
    def validate_config(cls, config: ConnectorConfig) -> Iterable[tuple[tuple[str, ...], str]]:
        """Cross-key checks after schema validation: yield ``(key_path, message)``."""
        return ()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Read the outbox and send upstream until cancelled. Call ``task_status.started()`` once set up."""
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
