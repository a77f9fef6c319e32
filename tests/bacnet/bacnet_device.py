"""A bacpypes3 BACnet/IP test device, run as a subprocess by the bacnet tests and bench.

    python bacnet_device.py --address 127.0.0.2:47810 --instance 1001 --objects 60 \
        [--max-apdu 206] [--segmentation none|both] [--no-rpm] [--no-cov] [--read-only analog-output,2] [--bbmd] [--foreign BBMD --ttl 30]
    python bacnet_device.py --ipv6 --address "[::1]:47810" --instance 1001 [--peer 0x000257=[::1]:47811]

With ``--ipv6`` the device speaks BACnet/IPv6 through gatewayd's own IPv6 link
(its VMAC is its instance number); ``--peer VMAC=[addr]:port`` seeds its VMAC table.

Objects cycle through AI, AO, AV, BI, BO, BV, MSI, MSO, MSV (instances 1, 2, ...);
outputs and values are commandable (priority array + relinquish default). The
script prints ``READY <instance>`` once its socket is bound, then reads commands
from stdin, one per line, answering ``OK`` (or ``ERR <reason>``):

    set <type>,<instance> <value>     change present-value (inputs) / relinquish default (commandables)
    flags <type>,<instance> <a> <f> <o> <s>   status-flags in-alarm fault (overridden: ignored) out-of-service
    add <type>,<instance>             add an object (object-list grows)
    pa <type>,<instance>              print the priority array as JSON
    subs                              number of active COV subscriptions (object and property)
    rpm                               number of ReadPropertyMultiple requests received so far
    silent 1|0                        stop / resume sending COV notifications (as --cov-silent)
    status                            what ReinitializeDevice / DeviceCommunicationControl / UTC time sync did
    iam <host:port>                   send an I-Am there
    read <host:port> <type>,<inst> <property>   ReadProperty from another device
    quit

Test code, not part of gatewayd; it supports SubscribeCOV (bacpypes3's own) and
a small SubscribeCOVProperty on present-value for the driver's tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bacpypes3.apdu import (SimpleAckPDU, SubscribeCOVPropertyRequest, UnconfirmedCOVNotificationRequest,
                            ConfirmedCOVNotificationRequest)
from bacpypes3.app import Application
from bacpypes3.basetypes import (EngineeringUnits, PropertyValue, Segmentation)
from bacpypes3.comm import bind
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.errors import ExecutionError, UnrecognizedService
from bacpypes3.ipv4.link import NormalLinkLayer, BBMDLinkLayer, ForeignLinkLayer
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryInputObject, BinaryOutputObject, BinaryValueObjectCmd
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateInputObject, MultiStateOutputObject, MultiStateValueObject
from bacpypes3.pdu import Address, IPv4Address
from bacpypes3.primitivedata import ObjectIdentifier, Unsigned

KINDS = ["analog-input", "analog-output", "analog-value", "binary-input", "binary-output", "binary-value",
         "multi-state-input", "multi-state-output", "multi-state-value"]


def make_object(kind: str, inst: int, prefix: str):
    name = f"{prefix}-{kind}-{inst}"
    common = dict(objectIdentifier=(kind, inst), objectName=name, description=f"test {kind} {inst}",
                  statusFlags=[0, 0, 0, 0], eventState="normal", outOfService=False)
    if kind == "analog-input":
        return AnalogInputObject(**common, presentValue=20.0 + inst, units=EngineeringUnits.degreesCelsius,
                                 covIncrement=0.1)
    if kind == "analog-output":
        return AnalogOutputObject(**common, presentValue=0.0, relinquishDefault=0.0, units=EngineeringUnits.percent,
                                  covIncrement=0.1)
    if kind == "analog-value":
        return AnalogValueObjectCmd(**common, presentValue=1.0 * inst, relinquishDefault=1.0 * inst,
                                    units=EngineeringUnits.noUnits, covIncrement=0.1)
    if kind == "binary-input":
        return BinaryInputObject(**common, presentValue="inactive", polarity="normal",
                                 activeText="on", inactiveText="off")
    if kind == "binary-output":
        return BinaryOutputObject(**common, presentValue="inactive", relinquishDefault="inactive",
                                  polarity="normal", activeText="running", inactiveText="stopped")
    if kind == "binary-value":
        return BinaryValueObjectCmd(**common, presentValue="inactive", relinquishDefault="inactive",
                                    activeText="yes", inactiveText="no")
    states = ["low", "medium", "high"]
    if kind == "multi-state-input":
        return MultiStateInputObject(**common, presentValue=1, numberOfStates=3, stateText=states)
    if kind == "multi-state-output":
        return MultiStateOutputObject(**common, presentValue=1, relinquishDefault=1, numberOfStates=3,
                                      stateText=states)
    return MultiStateValueObject(**common, presentValue=2, numberOfStates=3, stateText=states)


class TestApp(Application):
    """Application with a tiny SubscribeCOVProperty (present-value only) on top of bacpypes3's SubscribeCOV."""

    no_rpm = False
    no_cov = False
    cov_silent = False
    read_only: set = set()  # "type,instance": present-value writes get write-access-denied

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.prop_subs = {}  # (addr, proc, objid) -> (confirmed, increment, last)
        self.log = {}  # what device management requests did
        self.rpm_requests = 0  # ReadPropertyMultiple requests received (answered or refused)

    async def do_ReadPropertyMultipleRequest(self, apdu):
        self.rpm_requests += 1
        if self.no_rpm:
            raise UnrecognizedService("no RPM here")
        return await super().do_ReadPropertyMultipleRequest(apdu)

    async def do_WritePropertyRequest(self, apdu):
        oid = apdu.objectIdentifier
        if f"{oid[0]},{oid[1]}" in self.read_only:
            raise ExecutionError(errorClass="property", errorCode="writeAccessDenied")
        obj = self.get_object_id(oid)
        states = getattr(obj, "numberOfStates", None)
        if states is not None and str(apdu.propertyIdentifier) == "present-value":
            v = apdu.propertyValue.cast_out(Unsigned, null=apdu.priority is not None)
            if v is not None and not 1 <= v <= states:  # as a real device checks a state number
                raise ExecutionError(errorClass="property", errorCode="valueOutOfRange")
        return await super().do_WritePropertyRequest(apdu)

    async def do_SubscribeCOVRequest(self, apdu):
        if self.no_cov:
            raise ExecutionError(errorClass="services", errorCode="covSubscriptionFailed")
        return await super().do_SubscribeCOVRequest(apdu)

    async def do_SubscribeCOVPropertyRequest(self, apdu: SubscribeCOVPropertyRequest):
        if self.no_cov:
            raise ExecutionError(errorClass="services", errorCode="covSubscriptionFailed")
        obj = self.get_object_id(apdu.monitoredObjectIdentifier)
        if obj is None:
            raise ExecutionError(errorClass="object", errorCode="unknownObject")
        key = (apdu.pduSource, apdu.subscriberProcessIdentifier, apdu.monitoredObjectIdentifier)
        if apdu.issueConfirmedNotifications is None and apdu.lifetime is None:
            self.prop_subs.pop(key, None)
        else:
            self.prop_subs[key] = [bool(apdu.issueConfirmedNotifications), apdu.covIncrement, None]
        await self.response(SimpleAckPDU(context=apdu))
        if key in self.prop_subs:
            self.notify_property(key, force=True)

    async def do_ReinitializeDeviceRequest(self, apdu):
        if apdu.password != "secret":
            raise ExecutionError(errorClass="security", errorCode="passwordFailure")
        self.log["reinitialize"] = str(apdu.reinitializedStateOfDevice)
        await self.response(SimpleAckPDU(context=apdu))

    async def do_DeviceCommunicationControlRequest(self, apdu):
        if apdu.password != "secret":
            raise ExecutionError(errorClass="security", errorCode="passwordFailure")
        self.log["dcc"] = str(apdu.enableDisable)
        self.log["dcc_minutes"] = apdu.timeDuration
        await self.response(SimpleAckPDU(context=apdu))

    async def do_UTCTimeSynchronizationRequest(self, apdu):
        self.log["utc_time_sync"] = str(apdu.time)
        self.log["utc_time_syncs"] = self.log.get("utc_time_syncs", 0) + 1

    async def do_TimeSynchronizationRequest(self, apdu):
        self.log["time_sync"] = str(apdu.time)
        self.log["time_syncs"] = self.log.get("time_syncs", 0) + 1

    def cov_notification(self, cov, apdu):
        if not self.cov_silent:
            super().cov_notification(cov, apdu)

    def notify_property(self, key, force=False):
        if self.cov_silent:
            return
        addr, proc, objid = key
        confirmed, inc, last = self.prop_subs[key]
        obj = self.get_object_id(objid)
        pv = obj.presentValue
        if not force and last is not None and inc is not None and isinstance(pv, float) \
                and abs(pv - last) < inc:
            return
        self.prop_subs[key][2] = pv
        values = [PropertyValue(propertyIdentifier="present-value", value=pv),
                  PropertyValue(propertyIdentifier="status-flags", value=obj.statusFlags)]
        cls = ConfirmedCOVNotificationRequest if confirmed else UnconfirmedCOVNotificationRequest
        req = cls(subscriberProcessIdentifier=proc, initiatingDeviceIdentifier=self.device_object.objectIdentifier,
                  monitoredObjectIdentifier=objid, timeRemaining=0, listOfValues=values, destination=addr)
        fut = self.request(req)
        if confirmed:
            fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    def changed(self, objid):
        for key in list(self.prop_subs):
            if key[2] == objid:
                self.notify_property(key)


def build(args) -> TestApp:
    seg = Segmentation.segmentedBoth if args.segmentation == "both" else Segmentation.noSegmentation
    device = DeviceObject(
        objectIdentifier=("device", args.instance), objectName=f"testdev-{args.instance}",
        vendorIdentifier=999, vendorName="Gatewayd Test Devices", modelName="TD-9",
        firmwareRevision="1.2.3", applicationSoftwareVersion="4.5.6", location=f"lab rack {args.instance}",
        description=f"test device {args.instance}", maxApduLengthAccepted=args.max_apdu,
        segmentationSupported=seg, protocolVersion=1, protocolRevision=22,
        maxSegmentsAccepted=64 if args.segmentation == "both" else 1,
        systemStatus="operational", databaseRevision=1,
    )
    app = TestApp()
    app.no_rpm, app.no_cov, app.cov_silent = args.no_rpm, args.no_cov, args.cov_silent
    app.read_only = set(args.read_only)
    app.asap = ApplicationServiceAccessPoint(device, app.device_info_cache)
    app.nsap = NetworkServiceAccessPoint()
    app.nse = NetworkServiceElement()
    bind(app.nse, app.nsap)
    bind(app, app.asap, app.nsap)
    if args.ipv6:
        from gatewayd_bacnet.ipv6 import IPv6Link, parse_ipv6, parse_vmac, vmac_for_instance

        vmac = parse_vmac(vmac_for_instance(args.instance))
        link = IPv6Link(parse_ipv6(args.address), vmac)
        for peer in args.peer:
            pv, _, pa = peer.partition("=")
            link.learn(pv, pa)
        addr = vmac
    else:
        addr = IPv4Address(args.address)
        if args.bbmd:
            link = BBMDLinkLayer(addr)
        elif args.foreign:
            link = ForeignLinkLayer(addr)
            link.register(IPv4Address(args.foreign), args.ttl)
        else:
            link = NormalLinkLayer(addr)
    app.link = link
    app.nsap.bind(link, address=addr)
    app.add_object(device)
    for i in range(args.objects):
        kind = KINDS[i % len(KINDS)]
        app.add_object(make_object(kind, i // len(KINDS) + 1, f"d{args.instance}"))
    return app


def _addr(text: str):
    if text.startswith("0x") and len(text) == 8:  # a BACnet/IPv6 VMAC
        from bacpypes3.pdu import VirtualAddress

        return VirtualAddress(text)
    return Address(text)


async def command(app: TestApp, line: str) -> str:
    parts = line.split()
    if not parts:
        return "OK"
    cmd = parts[0]
    if cmd == "quit":
        raise SystemExit(0)
    if cmd == "status":
        return "STATUS " + json.dumps(app.log, default=str)
    if cmd == "iam":
        app.i_am(address=_addr(parts[1]))
        return "OK"
    if cmd == "read":
        value = await app.read_property(_addr(parts[1]), ObjectIdentifier(parts[2]), parts[3])
        return f"VALUE {value}"
    if cmd == "silent":
        app.cov_silent = parts[1] == "1"
        return "OK"
    if cmd == "rpm":
        return f"RPM {app.rpm_requests}"
    if cmd == "subs":
        n = sum(len(det.cov_subscriptions) for det in app._cov_detections.values()) + len(app.prop_subs)
        return f"SUBS {n}"
    objid = ObjectIdentifier(parts[1])
    if cmd == "add":
        app.add_object(make_object(str(objid[0]), objid[1], "added"))
        return "OK"
    obj = app.get_object_id(objid)
    if obj is None:
        return f"ERR no object {parts[1]}"
    if cmd == "set":
        raw = parts[2]
        kind = str(objid[0])
        value = float(raw) if kind.startswith("analog") else int(raw) if kind.startswith("multi") else raw
        if hasattr(obj, "priorityArray"):
            obj.relinquishDefault = value
            obj.recalculating()
        else:
            obj.presentValue = value
        app.changed(objid)
        return "OK"
    if cmd == "flags":
        # bacpypes3 derives status-flags from these (overridden is always 0)
        alarm, fault, _overridden, oos = (int(x) for x in parts[2:6])
        obj.eventState = "offnormal" if alarm else "normal"
        obj.reliability = "unreliable-other" if fault else "no-fault-detected"
        obj.outOfService = bool(oos)
        app.changed(objid)
        return "OK"
    if cmd == "pa":
        out = []
        for pv in obj.priorityArray:
            out.append(None if pv.null is not None else getattr(pv, pv._choice))
        return "PA " + json.dumps(out, default=str)
    return f"ERR unknown command {cmd}"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--instance", type=int, required=True)
    p.add_argument("--objects", type=int, default=9)
    p.add_argument("--max-apdu", type=int, default=1476)
    p.add_argument("--segmentation", choices=("none", "both"), default="both")
    p.add_argument("--no-rpm", action="store_true")
    p.add_argument("--no-cov", action="store_true")
    p.add_argument("--cov-silent", action="store_true", help="accept COV subscriptions, never notify")
    p.add_argument("--read-only", action="append", default=[], metavar="TYPE,INST",
                   help="writes to this object are answered with write-access-denied")
    p.add_argument("--bbmd", action="store_true")
    p.add_argument("--foreign", default=None)
    p.add_argument("--ttl", type=int, default=30)
    p.add_argument("--ipv6", action="store_true", help="BACnet/IPv6 on --address \"[addr]:port\"")
    p.add_argument("--peer", action="append", default=[], help="ipv6: VMAC=[addr]:port of a known station")
    args = p.parse_args()
    app = build(args)
    await asyncio.gather(*getattr(app.link.server, "_transport_tasks", []))
    print(f"READY {args.instance}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            out = await command(app, line.decode().strip())
        except SystemExit:
            break
        except Exception as e:  # a test helper: report, keep going
            out = f"ERR {type(e).__name__}: {e}"
        print(out, flush=True)
    app.link.close()


if __name__ == "__main__":
    asyncio.run(main())
