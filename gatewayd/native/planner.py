"""Modbus block planner: the fewest requests that cover every point.

Rules per device: a block may include up to ``max_gap`` unrequested registers
between points, spans at most ``max_registers`` registers (``max_bits`` bits for
coils/discretes), and never spans a *forbidden* range (addresses the device
refused with exception 02/03). Deterministic; O(n log n) (+ O(n·f) for f
refused ranges).
"""

from __future__ import annotations

from array import array
from enum import IntEnum
from typing import NamedTuple, Sequence

from ._bindings import ffi, lib

__all__ = ["Table", "PlanPoint", "Block", "Plan", "plan"]


class Table(IntEnum):
    COIL = 0
    DISCRETE = 1
    HOLDING = 2
    INPUT = 3


class PlanPoint(NamedTuple):
    table: int
    unit: int
    address: int
    width: int


class Block(NamedTuple):
    table: int
    unit: int
    start: int
    count: int
    members: tuple  # ((point_index, offset_in_block), ...)


class Plan(NamedTuple):
    blocks: list
    errors: dict    # point_index -> message


_ERR = {lib.GW_PLAN_TOO_WIDE: "wider than the largest request allowed",
        lib.GW_PLAN_FORBIDDEN: "inside an address range the device refused (exception 02/03)",
        lib.GW_PLAN_ZERO_WIDTH: "width must be at least 1"}


def plan(points: Sequence, *, max_gap: int = 10, max_registers: int = 125, max_bits: int = 2000,
         forbidden: Sequence = ()) -> Plan:
    """Plan the blocks for one device. ``points``: ``(table, unit, address, width)``;
    ``forbidden``: ``(table, unit, start, end_inclusive)``."""
    n = len(points)
    if not (0 <= max_gap and 1 <= max_registers <= 65535 and 1 <= max_bits <= 65535):
        raise ValueError("max_gap >= 0, max_registers and max_bits 1..65535")
    if n:
        tables, units, addrs, widths = zip(*points)
        try:
            tb, ub = bytes(tables), bytes(units)
            ab, wb = array("I", addrs), array("I", widths)
        except (ValueError, OverflowError, TypeError):
            for i, (t, u, a, w) in enumerate(points):
                if not (0 <= t <= 3 and 0 <= u <= 255 and 0 <= a <= 0xFFFFFFFF and 0 <= w <= 0xFFFFFFFF):
                    raise ValueError(f"point {i}: table 0..3, unit 0..255, address and width >= 0: {(t, u, a, w)}")
            raise
        if max(tb) > 3:
            raise ValueError("table must be 0..3 (coil, discrete, holding, input)")
    else:
        tb = ub = b"\0"
        ab = wb = array("I", [0])
    nf = len(forbidden)
    fb = ffi.new("gw_range[]", max(nf, 1))
    for k, (t, u, s, e) in enumerate(forbidden):
        if e < s:
            raise ValueError(f"forbidden range {k}: end {e} < start {s}")
        f = fb[k]
        f.table, f.unit, f.start, f.end = t, u, s, e
    m = max(n, 1)
    order = ffi.new("gw_sort_item[]", m)
    blocks = ffi.new("gw_block[]", m)
    first = array("I", bytes(4 * (m + 1)))
    midx = array("I", bytes(4 * m))
    moff = array("I", bytes(4 * m))
    err = bytearray(m)
    nmem = ffi.new("size_t *")
    nb = lib.gw_plan(tb, ub, ffi.from_buffer("uint32_t[]", ab), ffi.from_buffer("uint32_t[]", wb), n, max_gap,
                     max_registers, max_bits, fb, nf, order, blocks, ffi.from_buffer("uint32_t[]", first),
                     ffi.from_buffer("uint32_t[]", midx), ffi.from_buffer("uint32_t[]", moff), nmem,
                     ffi.from_buffer("uint8_t[]", err))
    idx, off, fst = midx.tolist(), moff.tolist(), first.tolist()
    raw = ffi.unpack(blocks, nb)
    out = [Block(b.table, b.unit, b.start, b.count, tuple(zip(idx[fst[k]:fst[k + 1]], off[fst[k]:fst[k + 1]])))
           for k, b in enumerate(raw)]
    errors = {i: _ERR[e] for i, e in enumerate(err[:n]) if e}
    return Plan(out, errors)
