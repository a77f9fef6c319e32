"""Read plans: which properties of which objects, packed into ReadPropertyMultiple batches.

Pure code (no I/O). A batch must fit both ends: its request in one APDU of the
device's ``max_apdu`` (what the device accepts; we never segment requests), its
answer in one APDU of *our* max APDU (1476, what we tell the device we accept)
unless the device can transmit segmented responses (then up to ``max_segments``
segments; :data:`MAX_SEGMENTS` by default — measured with bench/bacnet.py,
unsegmented batches gave ~13 % more properties/s than 8-segment ones against
bacpypes3 devices, whose segmented transmit also tripped an assertion). Sizes are estimates on the safe side of the
BACnet encoding (clause 20.2): a ReadAccessResult per object is its object id
(5 octets), opening/closing tags (2) and per property its id (2-3), result tags
(2) and a value (a Real is 5 octets, status-flags 3, an enumeration 2);
:data:`VALUE_BUDGET` covers the usual present-value/status-flags/units.
Learned limits (a device that aborted with "segmentation not supported") cap
the number of objects per batch on top of that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["kind_of", "ObjectRead", "Batch", "plan_batches", "request_size", "response_size", "MAX_SEGMENTS"]

MAX_SEGMENTS = 1  # default: bacpypes3's segmented answers are slower than more requests (bench/bacnet.py)
HEADER = 4          # confirmed request / complex ack APCI
OBJECT_OVERHEAD = 7  # object id + list tags
PROP_REQUEST = 3     # property id (+ index) in the request
VALUE_BUDGET = 10    # property id + result tags + value, per property, in the answer
ARRAY_BUDGET = 60    # properties read whole that may be arrays/strings (priority-array, object-name ...)


def kind_of(object_type: str) -> str | None:
    """gatewayd point kind of a BACnet object type (analog/binary/multistate), None for others."""
    if object_type.startswith("analog"):
        return "analog"
    if object_type.startswith("binary"):
        return "binary"
    if object_type.startswith("multi-state"):
        return "multistate"
    return None


@dataclass
class ObjectRead:
    """One object's properties to read and the points they feed.

    Every ``present-value`` read also reads ``status-flags`` (the point's flags)."""

    oid: str
    points: list = field(default_factory=list)  # (point_id, property, index)

    def add(self, point_id: str, prop: str, index: int | None) -> None:
        self.points.append((point_id, prop, index))

    def props(self) -> list[tuple[str, int | None]]:
        out: list[tuple[str, int | None]] = []
        for _pid, prop, idx in self.points:
            if (prop, idx) not in out:
                out.append((prop, idx))
        if ("present-value", None) in out and ("status-flags", None) not in out:
            out.append(("status-flags", None))
        return out

    def point_ids(self) -> list[str]:
        return [p[0] for p in self.points]


@dataclass
class Batch:
    objects: list

    def specs(self) -> list:
        return [(o.oid, [p if i is None else (p, i) for p, i in o.props()]) for o in self.objects]


def _value_budget(prop: str, index: int | None) -> int:
    if index is None and prop not in ("present-value", "status-flags", "units", "reliability",
                                      "out-of-service", "event-state", "relinquish-default"):
        return ARRAY_BUDGET
    return VALUE_BUDGET


def request_size(o: ObjectRead) -> int:
    return OBJECT_OVERHEAD + PROP_REQUEST * len(o.props())


def response_size(o: ObjectRead) -> int:
    return OBJECT_OVERHEAD + sum(_value_budget(p, i) for p, i in o.props())


OUR_MAX_APDU = 1476


def plan_batches(objects: list[ObjectRead], max_apdu: int, segmented: bool, max_objects: int,
                 our_max_apdu: int = OUR_MAX_APDU, max_segments: int = MAX_SEGMENTS) -> list[Batch]:
    """Greedy packing in the given order; every object gets into some batch (an object
    that alone exceeds the budget goes alone — the device will say if it cannot).
    ``max_apdu``: the device's; ``segmented``: the device can send segmented answers."""
    req_budget = max_apdu - HEADER
    resp_budget = (our_max_apdu * max_segments if segmented else our_max_apdu) - HEADER
    out: list[Batch] = []
    cur: list[ObjectRead] = []
    rq = rs = 0
    for o in objects:
        q, s = request_size(o), response_size(o)
        if cur and (rq + q > req_budget or rs + s > resp_budget or len(cur) >= max_objects):
            out.append(Batch(cur))
            cur, rq, rs = [], 0, 0
        cur.append(o)
        rq += q
        rs += s
    if cur:
        out.append(Batch(cur))
    return out
