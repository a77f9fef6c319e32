"""The asyncio side of the BACnet driver: one bacpypes3 stack per configured network.

Everything in this module runs on the core's asyncio thread (``gatewayd.aio``):
a :class:`Stack` is built with ``bridge.run_sync(Stack, ...)`` (bacpypes3 needs
the running loop while its objects are constructed) and its coroutine methods
are called with ``bridge.run(stack.method, ...)``. Values cross back to trio as
plain Python (floats, ints, bools, str, lists) — never bacpypes3 objects — and
failures as :class:`BacnetError` (a normal ``Exception``; bacpypes3's own
error/reject/abort PDUs derive from ``BaseException``).

Incoming unsolicited traffic (I-Am, I-Have, COV notifications, foreign-device
registration results) is handed to ``events(item)``, a non-blocking sender
from ``bridge.channel()``, as small tuples:

* ``("i-am", network, instance, address, max_apdu, segmentation, vendor_id)``
* ``("i-have", network, device_instance, address, object_id, object_name)``
* ``("cov", network, address, process_id, object_id, {property: value}, confirmed)``
* ``("fd", network, status)`` — registration result code (0 = registered) or ``"expired"``
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, Callable

from bacpypes3.apdu import (AbortPDU, ConfirmedCOVNotificationRequest,
                            DeviceCommunicationControlRequest, ErrorPDU, ErrorRejectAbortNack, IAmRequest,
                            IHaveRequest, ReinitializeDeviceRequest, RejectPDU, SimpleAckPDU,
                            SubscribeCOVPropertyRequest, SubscribeCOVRequest, TimeSynchronizationRequest,
                            UnconfirmedCOVNotificationRequest, UTCTimeSynchronizationRequest, WhoHasRequest,
                            WhoIsRequest)
from bacpypes3.app import Application
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import (BinaryPV, DateTime, PropertyIdentifier, PropertyReference,
                                 WhoHasLimits, WhoHasObject)
from bacpypes3.comm import bind
from bacpypes3.constructeddata import AnyAtomic, Array, List as BList, Sequence
from bacpypes3.ipv4.link import ForeignLinkLayer, NormalLinkLayer
from bacpypes3.local.device import DeviceObject
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.pdu import Address, GlobalBroadcast, IPv4Address
from bacpypes3.primitivedata import (BitString, Boolean, CharacterString, Date, Double, Enumerated, Integer, Null,
                                     ObjectIdentifier, Real, Time, Unsigned)

from .ipv6 import IPv6Link, parse_ipv6, parse_vmac, station_address, vmac_for_instance

__all__ = ["Stack", "BacnetError", "plain", "SEGMENTATION", "address_text"]


def address_text(addr) -> str:
    """An address as the TOML writes it: a station on a remote BACnet/IP network is
    ``"net:a.b.c.d:port"`` (bacpypes3 prints it in hex), everything else as bacpypes3 does."""
    raw = getattr(addr, "addrAddr", None)
    if getattr(addr, "addrType", None) == Address.remoteStationAddr and raw is not None and len(raw) == 6:
        return f"{addr.addrNet}:{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}:{int.from_bytes(raw[4:6], 'big')}"
    return str(addr)

SEGMENTATION = {"both": "segmented-both", "transmit": "segmented-transmit", "receive": "segmented-receive",
                "none": "no-segmentation"}
_SEG_SHORT = {v: k for k, v in SEGMENTATION.items()}


class BacnetError(Exception):
    """A request failed. ``kind``: error / reject / abort / timeout / transport / invalid;
    ``reason``: the BACnet reason in bacpypes3 spelling (``segmentation-not-supported``,
    ``unrecognized-service``, ``unknown-object`` ...)."""

    def __init__(self, kind: str, reason: str, error_class: str | None = None) -> None:
        self.kind, self.reason, self.error_class = kind, reason, error_class
        cls = f"{error_class}/" if error_class else ""
        super().__init__(f"{kind}: {cls}{reason}")


def _as_error(e: ErrorRejectAbortNack) -> BacnetError:
    if isinstance(e, AbortPDU):
        reason = str(e.apduAbortRejectReason)
        if reason in ("no-response", "noResponse"):
            return BacnetError("timeout", "no response")
        return BacnetError("abort", reason)
    if isinstance(e, RejectPDU):
        return BacnetError("reject", str(e.apduAbortRejectReason))
    if isinstance(e, ErrorPDU):
        return BacnetError("error", str(getattr(e, "errorCode", e)), str(getattr(e, "errorClass", "")) or None)
    return BacnetError("error", str(e))


def plain(v: Any) -> Any:
    """A bacpypes3 value as plain, JSON-able Python."""
    if v is None or isinstance(v, Null):
        return None
    if isinstance(v, (Boolean, bool)):
        return bool(v)
    if isinstance(v, BinaryPV):
        return 1 if int(v) == 1 else 0
    if isinstance(v, Enumerated):
        return str(v)  # enumeration name, e.g. "degrees-celsius", "segmented-both"
    if isinstance(v, (Real, Double, float)):
        return float(v)
    if isinstance(v, (Unsigned, Integer, int)):
        return int(v)
    if isinstance(v, (CharacterString, str)):
        return str(v)
    if isinstance(v, ObjectIdentifier):
        return f"{v[0]},{v[1]}"
    if isinstance(v, BitString):
        return [int(b) for b in v]
    if isinstance(v, (Date, Time, DateTime)):
        return str(v)
    if isinstance(v, AnyAtomic):
        return plain(v.get_value())
    if isinstance(v, (list, tuple, Array, BList)):
        return [plain(x) for x in v]
    if isinstance(v, Sequence):
        # priority values, error types ...: the one set field, else a dict
        choice = getattr(v, "_choice", None)
        if choice is not None:
            return plain(getattr(v, choice))
        out = {}
        for name in getattr(v, "_elements", {}):
            x = getattr(v, name, None)
            if x is not None:
                out[name] = plain(x)
        return out
    choice = getattr(v, "_choice", None)
    if choice is not None:
        return plain(getattr(v, choice))
    return str(v)


class _ForeignLink(ForeignLinkLayer):
    """Foreign-device link that re-registers at ``renew`` x TTL (bacpypes3 waits the whole TTL,
    leaning on the BBMD's 30 s grace) and reports every registration result."""

    renew = 0.75
    report: Callable[[Any], None] = staticmethod(lambda status: None)

    def _start_tracking_registration(self):
        self._stop_tracking_registration()
        loop = asyncio.get_running_loop()
        self._registration_handle = loop.call_later(max(1.0, self.bbmdTimeToLive * self.renew),
                                                    self._start_registration)
        self._registration_timeout_handle = loop.call_later(self.bbmdTimeToLive + 30, self._registration_expired)

    def _registration_expired(self):
        super()._registration_expired()
        self.report("expired")

    async def confirmation(self, lpdu):
        await super().confirmation(lpdu)
        if type(lpdu).__name__ == "Result" and self.bbmdRegistrationStatus not in (-2, -1) \
                and lpdu.pduSource == self.bbmdAddress:
            self.report(self.bbmdRegistrationStatus)


class _App(Application):
    """bacpypes3 Application that hands unsolicited traffic to the driver."""

    network = ""
    events: Callable[[tuple], None] = staticmethod(lambda item: None)

    async def do_IAmRequest(self, apdu: IAmRequest) -> None:
        await self.device_info_cache.set_device_info(apdu)
        await super().do_IAmRequest(apdu)
        seg = str(apdu.segmentationSupported)
        self.events(("i-am", self.network, apdu.iAmDeviceIdentifier[1], address_text(apdu.pduSource),
                     int(apdu.maxAPDULengthAccepted), _SEG_SHORT.get(seg, seg), int(apdu.vendorID)))

    async def do_IHaveRequest(self, apdu: IHaveRequest) -> None:
        self.events(("i-have", self.network, apdu.deviceIdentifier[1], address_text(apdu.pduSource),
                     plain(apdu.objectIdentifier), str(apdu.objectName)))

    def _cov(self, apdu, confirmed: bool) -> None:
        values = {}
        for pv in apdu.listOfValues:
            prop = pv.propertyIdentifier
            try:
                ptype = _property_type(apdu.monitoredObjectIdentifier[0], prop)
                v = pv.value.cast_out(ptype) if ptype is not None else pv.value
            except Exception:  # an undecodable value: skip it, keep the others
                continue
            values[str(prop)] = plain(v)
        self.events(("cov", self.network, address_text(apdu.pduSource), int(apdu.subscriberProcessIdentifier),
                     plain(apdu.monitoredObjectIdentifier), values, confirmed))

    async def do_ConfirmedCOVNotificationRequest(self, apdu: ConfirmedCOVNotificationRequest) -> None:
        self._cov(apdu, True)
        await self.response(SimpleAckPDU(context=apdu))

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: UnconfirmedCOVNotificationRequest) -> None:
        self._cov(apdu, False)


def _property_type(obj_type, prop):
    from bacpypes3.vendor import get_vendor_info

    cls = get_vendor_info(0).get_object_class(obj_type)
    if cls is None:
        return None
    t = cls.get_property_type(prop)
    return t


class Stack:
    """One network: a bacpypes3 application bound to one local address. Loop thread only."""

    def __init__(self, name: str, mode: str, address: str, device_instance: int, device_name: str,
                 apdu_timeout_ms: int, apdu_retries: int, events: Callable[[tuple], None],
                 bbmd: str | None = None, ttl: int = 300, renew: float = 0.75, vmac: str | None = None,
                 peers: dict | None = None, routes: dict | None = None) -> None:
        self.name = name
        self.mode = mode
        self.events = events
        # a confirmed request is over after its tries (+ slack): bounds a state machine that lost its socket
        self.request_bound = apdu_timeout_ms / 1000 * (apdu_retries + 1) + 2.0
        self.routes = dict(routes or {})
        self.ipv6 = mode == "ipv6"
        if self.ipv6:
            try:
                local = parse_ipv6(address)
                vaddr = parse_vmac(vmac or vmac_for_instance(device_instance))
            except ValueError as e:
                raise BacnetError("invalid", str(e)) from None
        else:
            local = IPv4Address(address)
        self.local = local
        device = DeviceObject(
            objectIdentifier=("device", device_instance), objectName=device_name, vendorIdentifier=999,
            vendorName="gatewayd", modelName="gatewayd", firmwareRevision="gatewayd",
            applicationSoftwareVersion="gatewayd", maxApduLengthAccepted=1476,
            segmentationSupported="segmented-both", maxSegmentsAccepted=64, apduTimeout=apdu_timeout_ms,
            numberOfApduRetries=apdu_retries, apduSegmentTimeout=apdu_timeout_ms, protocolVersion=1,
            protocolRevision=22, systemStatus="operational", databaseRevision=1,
        )
        app = _App()
        app.network = name
        app.events = events
        app.asap = ApplicationServiceAccessPoint(device, app.device_info_cache)
        app.nsap = NetworkServiceAccessPoint()
        app.nse = NetworkServiceElement()
        bind(app.nse, app.nsap)
        bind(app, app.asap, app.nsap)
        if mode == "foreign":
            link = _ForeignLink(local)
            link.renew = renew
            link.report = lambda status: events(("fd", name, status))
            link.register(IPv4Address(bbmd), int(ttl))
        elif self.ipv6:
            link = IPv6Link(local, vaddr)
            for peer_vmac, peer_addr in (peers or {}).items():
                try:
                    link.learn(peer_vmac, peer_addr)
                except ValueError as e:
                    raise BacnetError("invalid", f"peers: {e}") from None
            self.vmac = str(vaddr)
        else:
            link = NormalLinkLayer(local)
        self.link = link
        app.nsap.bind(link, address=vaddr if self.ipv6 else local)
        app.add_object(device)
        self.app = app
        self.device = device

    def _addr(self, address: str):
        return station_address(address, self.ipv6)

    # ------------------------------------------------------------------ lifecycle
    async def ready(self) -> str:
        """Wait until the UDP socket(s) are bound; return the local address."""
        await asyncio.gather(*self.link.server._transport_tasks)
        for dnet, router in self.routes.items():  # static paths to remote networks (no Who-Is-Router needed)
            await self.app.nsap.router_info_cache.update_path_info(
                None, station_address(router, self.ipv6) if self.ipv6 else IPv4Address(router), {int(dnet)})
        ready = getattr(self.link.server, "_local_transport_ready", None)  # (IPv4 only)
        if ready is not None:
            await ready.wait()
        return str(self.local) if not self.ipv6 else f"{self.local} (VMAC {self.vmac})"

    def close(self) -> None:
        if self.mode == "foreign":
            try:
                self.link.unregister()
            except Exception:  # closing anyway
                pass
        self.link.close()

    def check_socket(self) -> None:
        """Raise ``BacnetError("transport")`` when the network's socket is closed (nothing can go out)."""
        srv = self.link.server  # IPv4: local_transport; IPv6: transport
        tr = srv.local_transport if hasattr(srv, "local_transport") else getattr(srv, "transport", None)
        if tr is None or tr.is_closing():
            raise BacnetError("transport", f"network {self.name}: the UDP socket is closed")

    def registration_status(self) -> int | None:
        return getattr(self.link, "bbmdRegistrationStatus", None)

    # ------------------------------------------------------------------ requests
    async def _request(self, apdu, timeout: float | None = None):
        try:
            fut = self.app.request(apdu)
            return await (asyncio.wait_for(fut, timeout) if timeout else fut)
        except ErrorRejectAbortNack as e:
            raise _as_error(e) from None
        except asyncio.TimeoutError:
            raise BacnetError("timeout", "no response") from None
        except OSError as e:
            raise BacnetError("transport", str(e)) from None

    async def who_is(self, low: int | None, high: int | None, address: str | None) -> None:
        """Send a Who-Is (global broadcast unless ``address``); I-Ams arrive as events."""
        req = WhoIsRequest(destination=self._addr(address) if address else GlobalBroadcast())
        if low is not None:
            req.deviceInstanceRangeLowLimit = low
            req.deviceInstanceRangeHighLimit = high
        await self._request(req)

    async def who_has(self, low: int | None, high: int | None, object_id: str | None, name: str | None,
                      address: str | None) -> None:
        obj = WhoHasObject(objectIdentifier=ObjectIdentifier(object_id)) if object_id else \
            WhoHasObject(objectName=CharacterString(name))
        req = WhoHasRequest(object=obj, destination=self._addr(address) if address else GlobalBroadcast())
        if low is not None:
            req.limits = WhoHasLimits(deviceInstanceRangeLowLimit=low, deviceInstanceRangeHighLimit=high)
        await self._request(req)

    async def read(self, address: str, object_id: str, prop: str, index: int | None = None) -> Any:
        try:
            v = await self.app.read_property(self._addr(address), ObjectIdentifier(object_id),
                                             PropertyIdentifier(prop), index)
        except ErrorRejectAbortNack as e:
            raise _as_error(e) from None
        if isinstance(v, ErrorRejectAbortNack):
            raise _as_error(v)
        if isinstance(v, str) and v.startswith("-no "):
            raise BacnetError("invalid", f"{object_id} {prop}: {v.strip('-')}")
        return plain(v)

    async def read_multiple(self, address: str, specs: list[tuple[str, list]]) -> list[tuple]:
        """ReadPropertyMultiple. ``specs``: ``[(object_id, [prop or (prop, index), ...]), ...]``.
        Returns ``[(object_id, prop, index, value, error_or_None), ...]``."""
        params = []
        for oid, props in specs:
            refs = []
            for p in props:
                if isinstance(p, (tuple, list)):
                    refs.append(PropertyReference(propertyIdentifier=PropertyIdentifier(p[0]),
                                                  propertyArrayIndex=p[1]))
                else:
                    refs.append(PropertyIdentifier(p))
            params.extend([ObjectIdentifier(oid), refs])
        try:
            res = await self.app.read_property_multiple(self._addr(address), params)
        except ErrorRejectAbortNack as e:
            raise _as_error(e) from None
        if isinstance(res, ErrorRejectAbortNack):
            raise _as_error(res)
        if res is None:
            raise BacnetError("invalid", "unexpected answer to ReadPropertyMultiple")
        out = []
        for oid, prop, idx, value in res:
            err = None
            if value is not None and type(value).__name__ == "ErrorType":
                err = f"{value.errorClass}/{value.errorCode}"
                value = None
            out.append((f"{oid[0]},{oid[1]}", str(prop), idx, None if err else plain(value), err))
        return out

    async def write(self, address: str, object_id: str, prop: str, value: Any, priority: int | None,
                    index: int | None = None) -> None:
        """WriteProperty; ``value=None`` writes NULL (relinquish at ``priority``)."""
        oid = ObjectIdentifier(object_id)
        try:
            if value is None:
                v: Any = Null(())
            elif str(oid[0]) in ("binary-input", "binary-output", "binary-value") and prop == "present-value":
                v = BinaryPV("active" if value else "inactive")
            elif str(oid[0]).startswith("multi-state") and prop == "present-value":
                v = Unsigned(int(value))
            elif str(oid[0]).startswith("analog") and prop == "present-value":
                v = Real(float(value))
            else:
                v = value
        except (TypeError, ValueError, OverflowError) as e:
            raise BacnetError("invalid", f"cannot encode {value!r} for {object_id} {prop}: {e}") from None
        self.check_socket()
        try:
            r = await asyncio.wait_for(self.app.write_property(self._addr(address), oid, PropertyIdentifier(prop),
                                                               v, index, priority), self.request_bound)
        except ErrorRejectAbortNack as e:
            raise _as_error(e) from None
        except (TypeError, ValueError, OverflowError) as e:
            raise BacnetError("invalid", f"cannot encode {value!r} for {object_id} {prop}: {e}") from None
        except asyncio.TimeoutError:
            raise BacnetError("timeout", "no response") from None
        except OSError as e:
            raise BacnetError("transport", str(e)) from None
        if isinstance(r, ErrorRejectAbortNack):
            raise _as_error(r)
        if isinstance(r, str) and r.startswith("-no "):
            raise BacnetError("invalid", f"{object_id} {prop}: {r.strip('-')}")

    async def subscribe(self, address: str, process_id: int, object_id: str, confirmed: bool,
                        lifetime: int | None, prop: str | None = None, increment: float | None = None) -> None:
        """SubscribeCOV (``prop`` None) or SubscribeCOVProperty; ``lifetime=None`` and
        ``confirmed=None`` cancel."""
        cls = SubscribeCOVPropertyRequest if prop else SubscribeCOVRequest
        req = cls(subscriberProcessIdentifier=process_id, monitoredObjectIdentifier=ObjectIdentifier(object_id),
                  destination=self._addr(address))
        if lifetime is not None:
            req.issueConfirmedNotifications = bool(confirmed)
            req.lifetime = int(lifetime)
        if prop:
            # the APDU's element is primitivedata.PropertyReference, which takes the name (or (name, index))
            req.monitoredPropertyIdentifier = prop
            if increment is not None:
                req.covIncrement = Real(increment)
        await self._request(req)

    async def time_sync(self, address: str | None, utc: bool = True) -> str:
        now = datetime.datetime.now(datetime.timezone.utc) if utc else datetime.datetime.now()
        dt = DateTime(date=Date((now.year - 1900, now.month, now.day, now.isoweekday())),
                      time=Time((now.hour, now.minute, now.second, now.microsecond // 10000)))
        cls = UTCTimeSynchronizationRequest if utc else TimeSynchronizationRequest
        await self._request(cls(time=dt, destination=self._addr(address) if address else GlobalBroadcast()))
        return now.isoformat()

    async def reinitialize(self, address: str, state: str, password: str | None) -> None:
        req = ReinitializeDeviceRequest(reinitializedStateOfDevice=state, destination=self._addr(address))
        if password:
            req.password = CharacterString(password)
        await self._request(req)

    async def communication_control(self, address: str, enable: str, duration_min: int | None,
                                    password: str | None) -> None:
        req = DeviceCommunicationControlRequest(enableDisable=enable, destination=self._addr(address))
        if duration_min is not None:
            req.timeDuration = Unsigned(duration_min)
        if password:
            req.password = CharacterString(password)
        await self._request(req)

    async def local_read(self, prop: str) -> Any:
        """A property of our own device object (what others read from us)."""
        return plain(await self.device.read_property(PropertyIdentifier(prop)))
