"""Modbus block planner: the fewest read requests that cover every point of a device.

Rules (per device; a driver calls :func:`plan` once per device with its settings):

* a block reads one table of one unit: ``start .. start + count - 1``;
* between the points in a block there may be unrequested gaps of at most
  ``max_gap`` registers (bits for coils/discretes) — they are read and ignored;
* a block spans at most ``max_registers`` registers (default 125, the Modbus
  limit for FC3/4; devices may need less) or ``max_bits`` bits (default 2000);
* a block never spans a *forbidden* range, ``(table, unit, start, end_inclusive)``:
  addresses the device refused with exception 02/03.

Points are ``(table, unit, address, width)``; they may overlap or repeat. A point
that cannot be planned (wider than the cap, overlapping a forbidden range, beyond
address 65535, width 0, table not 0-3, unit not 0-255) lands in ``Plan.errors``
with a message; the others are planned. The result is deterministic (blocks in
(table, unit, address) order, members by address then input order) and optimal
in the number of blocks. Time O(n + f log f + n log f) in C (radix sort).

Example::

    p = plan([(Table.HOLDING, 1, 0, 2), (Table.HOLDING, 1, 12, 1)], max_gap=10)
    # p.blocks == [Block(2, 1, 0, 13, (0, 1), (0, 12))], p.errors == {}
    # p.blocks[0].members == ((0, 0), (1, 12))

A driver that plans the same points again (after a learned refusal, say) packs them
once with :class:`PlanInput` and passes that instead of the tuples: the packing is
about a third of a 10,000-point call.
"""

from __future__ import annotations

from array import array
from enum import IntEnum
from itertools import chain, compress, repeat
from typing import NamedTuple, Sequence

from ._bindings import ffi, lib

__all__ = ["Table", "PlanPoint", "Block", "Plan", "PlanInput", "plan"]


class Table(IntEnum):
    COIL = 0
    DISCRETE = 1
    HOLDING = 2
    INPUT = 3


class PlanPoint(NamedTuple):
    table: int
    unit: int
    address: int
    width: int  # registers, or bits for coils/discretes


class Block(NamedTuple):
    """One read request: ``count`` registers (bits) from ``start`` of one table of one unit.

    ``indices[k]`` is the input index of the k-th point read by the block (address
    order) and ``offsets[k]`` its offset in registers (bits) from ``start``.
    """

    table: int
    unit: int
    start: int
    count: int
    indices: tuple
    offsets: tuple

    @property
    def members(self) -> tuple:
        """``((point_index, offset_in_block), ...)`` in address order."""
        return tuple(zip(self.indices, self.offsets))

    @classmethod
    def of(cls, table: int, unit: int, start: int, count: int, members) -> "Block":
        """A block from ``(point_index, offset)`` pairs (tests and hand-made plans)."""
        return cls(table, unit, start, count, tuple(i for i, _ in members), tuple(o for _, o in members))


class Plan(NamedTuple):
    blocks: list
    errors: dict  # point_index -> message


_ERRORS = {lib.GW_PLAN_TOO_WIDE: "wider than the largest request allowed",
           lib.GW_PLAN_FORBIDDEN: "inside an address range the device refused (exception 02/03)",
           lib.GW_PLAN_ZERO_WIDTH: "width must be at least 1",
           lib.GW_PLAN_ADDRESS: "beyond the Modbus address space (0..65535)",
           lib.GW_PLAN_TABLE: "table must be 0..3 (coil, discrete, holding, input)",
           lib.GW_PLAN_UNIT: "unit must be 0..255"}
_new_block = tuple.__new__


def _quads(points: Sequence) -> array:
    try:
        return array("I", list(chain.from_iterable(points)))  # (a list first: ~2x faster than the iterator)
    except (OverflowError, TypeError, ValueError):
        pass
    out = array("I")
    for i, p in enumerate(points):
        if len(p) != 4:
            raise ValueError(f"point {i}: expected (table, unit, address, width), got {p!r}")
        # out-of-range numbers become values the C side refuses per point (not an exception)
        out.extend(v if isinstance(v, int) and 0 <= v <= 0xFFFFFFFF else 0xFFFFFFFF for v in p)
    return out


class PlanInput:
    """Points packed for :func:`plan` once, to plan them again cheaply.

    ``PlanInput(points)`` takes the same ``(table, unit, address, width)`` tuples
    as :func:`plan` and keeps them as one C array plus the scratch space the
    planner needs; planning it again allocates only the result. Not for use
    by two threads at once (the scratch space is shared; the C call drops the GIL).
    """

    __slots__ = ("n", "_quads", "_cquads", "_scratch")

    def __init__(self, points: Sequence) -> None:
        n = len(points)
        quads = _quads(points)
        if len(quads) != 4 * n:
            raise ValueError("every point is (table, unit, address, width)")
        self.n = n
        self._quads = quads
        self._cquads = ffi.from_buffer("uint32_t[]", quads)
        self._scratch = ffi.new("gw_sort_item[]", 2 * max(n, 1))

    def __len__(self) -> int:
        return self.n


def plan(points: "Sequence | PlanInput", *, max_gap: int = 10, max_registers: int = 125, max_bits: int = 2000,
         forbidden: Sequence = ()) -> Plan:
    """Plan one device: ``points`` are ``(table, unit, address, width)`` (or a :class:`PlanInput`
    of them), ``forbidden`` are ``(table, unit, start, end_inclusive)``. See the module docstring."""
    if not (0 <= max_gap <= 0xFFFF and 1 <= max_registers <= 0xFFFF and 1 <= max_bits <= 0xFFFF):
        raise ValueError("max_gap must be 0..65535, max_registers and max_bits 1..65535")
    prepared = points if isinstance(points, PlanInput) else PlanInput(points)
    n = prepared.n
    nf = len(forbidden)
    fb = ffi.new("gw_range[]", max(nf, 1))
    for k, r in enumerate(forbidden):
        t, u, s, e = r
        if not (0 <= t <= 3 and 0 <= u <= 255 and 0 <= s <= e <= 0xFFFF):
            raise ValueError(f"forbidden range {k}: (table 0..3, unit 0..255, start <= end <= 65535), got {r!r}")
        f = fb[k]
        f.table, f.unit, f.start, f.end = t, u, s, e
    m = max(n, 1)
    blocks = array("I", bytes(16 * m))
    first = array("I", bytes(4 * (m + 1)))
    members = array("I", bytes(8 * m))
    err = bytearray(m)
    nb = lib.gw_plan(prepared._cquads, n, max_gap, max_registers, max_bits, fb, nf,
                     prepared._scratch, ffi.from_buffer("uint32_t[]", blocks),
                     ffi.from_buffer("uint32_t[]", first), ffi.from_buffer("uint32_t[]", members),
                     ffi.from_buffer("uint8_t[]", err))
    fs = first[: nb + 1].tolist()
    mem = members[: 2 * fs[nb]].tolist()
    idx, off = mem[0::2], mem[1::2]  # (no per-point Python objects: that was most of a 10k-point call)
    bl = blocks[: 4 * nb].tolist()
    cuts = list(map(slice, fs, fs[1:]))  # (all in C-level iteration: ~1 us per block less than a comprehension)
    out = list(map(_new_block, repeat(Block, nb),
                   zip(bl[0::4], bl[1::4], bl[2::4], bl[3::4],
                       map(tuple, map(idx.__getitem__, cuts)), map(tuple, map(off.__getitem__, cuts)))))
    errors = {}
    if fs[nb] != n:
        errors = {i: _ERRORS[err[i]] for i in compress(range(n), err)}  # (compress: only the failed ones)
    return Plan(out, errors)
