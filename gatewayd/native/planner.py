"""Modbus block planner: the fewest requests that cover every point.

Rules per device: a block may include up to ``max_gap`` unrequested registers
between points, spans at most ``max_registers`` registers (``max_bits`` bits for
coils/discretes), and never spans a *forbidden* range (addresses the device
refused with exception 02/03). Deterministic; O(n log n) (+ O(n·f) for f
refused ranges).
"""

from __future__ import annotations

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
    pts = ffi.new("gw_plan_point[]", max(n, 1))
    for i, (t, u, a, w) in enumerate(points):
        if not (0 <= t <= 3 and 0 <= u <= 255 and 0 <= a <= 0xFFFFFFFF and 0 <= w <= 0xFFFFFFFF):
            raise ValueError(f"point {i}: table 0..3, unit 0..255, address and width >= 0: {(t, u, a, w)}")
        p = pts[i]
        p.table, p.unit, p.address, p.width = t, u, a, w
    nf = len(forbidden)
    fb = ffi.new("gw_range[]", max(nf, 1))
    for k, (t, u, s, e) in enumerate(forbidden):
        if e < s:
            raise ValueError(f"forbidden range {k}: end {e} < start {s}")
        f = fb[k]
        f.table, f.unit, f.start, f.end = t, u, s, e
    order = ffi.new("gw_sort_item[]", max(n, 1))
    blocks = ffi.new("gw_block[]", max(n, 1))
    block_of = ffi.new("int32_t[]", max(n, 1))
    offset = ffi.new("uint32_t[]", max(n, 1))
    error = ffi.new("uint8_t[]", max(n, 1))
    nb = lib.gw_plan(pts, n, max_gap, max_registers, max_bits, fb, nf, order, blocks, block_of, offset, error)
    members: list[list] = [[] for _ in range(nb)]
    errors = {}
    bo = ffi.unpack(block_of, n)
    off = ffi.unpack(offset, n)
    err = ffi.unpack(error, n)
    for i in range(n):
        if err[i]:
            errors[i] = _ERR[err[i]]
        else:
            members[bo[i]].append((i, off[i]))
    out = [Block(blocks[b].table, blocks[b].unit, blocks[b].start, blocks[b].count, tuple(members[b]))
           for b in range(nb)]
    return Plan(out, errors)
