"""Register decoding and encoding: one C call decodes every point of a block.

Types: bool, int16/uint16, int32/uint32, int64/uint64, float32/float64, string.
Orders (how the value's big-endian byte image ``A B C D ...`` sits in the
registers on the wire):

========  ==========================================  ============================
order     32-bit registers (r0, r1)                    64-bit
========  ==========================================  ============================
ABCD      (AB, CD) — Modbus standard                  ABCDEFGH
CDAB      (CD, AB) — word swap, "least significant    GHEFCDAB (registers reversed)
          register first" (LSRF)
BADC      (BA, DC) — bytes swapped in each register   BADCFEHG
DCBA      (DC, BA) — fully little-endian              HGFEDCBA
========  ==========================================  ============================

``bit_offset`` extracts one bit (a bool); ``bit_mask`` extracts a field
(``(raw & mask) >> trailing_zeros(mask)``). ``scale``/``add`` give
``value = raw * scale + add`` (integers stay ``int`` when scale is 1 and add 0).
"""

from __future__ import annotations

import struct
from array import array
from typing import NamedTuple, Sequence

from ._bindings import ffi, lib

__all__ = ["PointSpec", "BlockDecoder", "EncodeError", "encode", "mask_write", "TYPES", "ORDERS"]

TYPES = {"bool": lib.GW_T_BOOL, "int16": lib.GW_T_INT16, "uint16": lib.GW_T_UINT16, "int32": lib.GW_T_INT32,
         "uint32": lib.GW_T_UINT32, "int64": lib.GW_T_INT64, "uint64": lib.GW_T_UINT64,
         "float32": lib.GW_T_FLOAT32, "float64": lib.GW_T_FLOAT64, "string": lib.GW_T_STRING}
WIDTHS = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2,
          "float64": 4}
ORDERS = {"ABCD": lib.GW_O_ABCD, "CDAB": lib.GW_O_CDAB, "BADC": lib.GW_O_BADC, "DCBA": lib.GW_O_DCBA}


class EncodeError(ValueError):
    """A value that cannot be written to the point's registers (range, NaN, type)."""


class PointSpec(NamedTuple):
    offset: int
    type: str
    order: str = "ABCD"
    bit_offset: int | None = None
    bit_mask: int | None = None
    scale: float = 1.0
    add: float = 0.0
    length: int | None = None  # registers, for strings

    @property
    def registers(self) -> int:
        return self.length if self.type == "string" else WIDTHS[self.type]


def _fill(c, s: PointSpec, i: int = 0) -> None:
    if s.type not in TYPES:
        raise ValueError(f"point {i}: unknown type {s.type!r} (one of {', '.join(TYPES)})")
    if s.order not in ORDERS:
        raise ValueError(f"point {i}: unknown order {s.order!r} (ABCD, CDAB, BADC, DCBA)")
    if s.type == "string" and not (s.length and s.length > 0):
        raise ValueError(f"point {i}: a string needs length (registers) >= 1")
    nbits = 16 * (s.length or 0 if s.type == "string" else WIDTHS.get(s.type, 1))
    if s.bit_offset is not None and not 0 <= s.bit_offset < max(nbits, 16):
        raise ValueError(f"point {i}: bit_offset {s.bit_offset} outside the value's {nbits} bits")
    if s.bit_mask is not None and not 0 < s.bit_mask < (1 << 64):
        raise ValueError(f"point {i}: bit_mask must be a non-zero 64-bit mask")
    if s.offset < 0 or s.scale == 0:
        raise ValueError(f"point {i}: offset >= 0 and scale != 0")
    c.offset = s.offset
    c.type = TYPES[s.type]
    c.order = ORDERS[s.order]
    c.bit_offset = -1 if s.bit_offset is None else s.bit_offset
    c.bit_mask = s.bit_mask or 0
    c.scale = s.scale
    c.add = s.add
    c.length = s.length or 0


class BlockDecoder:
    """Compiled once per block layout; :meth:`decode` turns a response payload into values."""

    def __init__(self, specs: Sequence[PointSpec], *, bits: bool = False) -> None:
        self.specs = [s if isinstance(s, PointSpec) else PointSpec(*s) for s in specs]
        self.n = n = len(self.specs)
        self.bits = bool(bits)
        self._c = ffi.new("gw_spec[]", max(n, 1))
        for i, s in enumerate(self.specs):
            _fill(self._c[i], s, i)
        self._values = array("d", bytes(8 * max(n, 1)))
        self._ivalues = array("q", bytes(8 * max(n, 1)))
        self._kinds = bytearray(max(n, 1))
        self._vp = ffi.from_buffer("double[]", self._values)
        self._ip = ffi.from_buffer("int64_t[]", self._ivalues)
        self._kp = ffi.from_buffer("uint8_t[]", self._kinds)
        self._strbuf = None
        if any(s.type == "string" for s in self.specs):
            size = 2 * max(s.offset + s.registers for s in self.specs)
            self._strbuf = bytearray(size)
            self._sp = ffi.from_buffer("uint8_t[]", self._strbuf)
        else:
            self._sp = ffi.NULL
        # Fast path for the common layout (16/32-bit numbers, no bits or strings): the kinds the C call
        # reports for a full payload are known in advance, and a builder generated once per layout picks
        # each value from the float or the integer array without a per-point branch.
        self._fast = None
        if not bits and all(s.type in ("int16", "uint16", "int32", "uint32", "float32", "float64")
                            and s.bit_offset is None for s in self.specs):
            expect, parts = bytearray(), []
            for i, s in enumerate(self.specs):
                as_int = not s.type.startswith("float") and s.scale == 1.0 and s.add == 0.0
                expect.append(lib.GW_K_INT if as_int else lib.GW_K_FLOAT)
                parts.append(f"q[{i}]" if as_int else f"d[{i}]")
            self._expect = bytes(expect)
            self._fast = eval(f"lambda d, q: [{', '.join(parts)}]")  # noqa: S307 - built from validated ints only

    def decode_into(self, payload: bytes) -> tuple[list, bytes]:
        """(values, kinds): kinds[i] is 5 for a point beyond a short payload (value None)."""
        if self._strbuf is not None and len(self._strbuf) < len(payload):
            self._strbuf.extend(bytes(len(payload) - len(self._strbuf)))
            self._sp = ffi.from_buffer("uint8_t[]", self._strbuf)
        buf = payload if type(payload) is bytes else ffi.from_buffer(payload)
        lib.gw_decode(self._c, self.n, buf, len(payload), self.bits, self._vp, self._ip, self._kp, self._sp)
        if self._fast is not None and self._kinds == self._expect:
            return self._fast(self._values.tolist(), self._ivalues.tolist()), self._expect
        vals = self._values.tolist()[: self.n]
        kinds = bytes(self._kinds[: self.n])
        if kinds.count(0) != self.n:  # anything but plain floats needs a fix-up
            for i, k in enumerate(kinds):
                if k == 1:
                    vals[i] = int(vals[i])
                elif k == 2:
                    vals[i] = self._ivalues[i]
                elif k == 3:
                    vals[i] = vals[i] != 0.0
                elif k == 4:
                    at = self._ivalues[i]
                    vals[i] = bytes(self._strbuf[at: at + int(vals[i])]).decode("latin-1")
                elif k == 5:
                    vals[i] = None
                elif k == 6:
                    vals[i] = self._ivalues[i] & 0xFFFFFFFFFFFFFFFF
        return vals, kinds

    def decode(self, payload: bytes) -> list:
        """Values in spec order; ``None`` for points whose registers the payload does not hold."""
        return self.decode_into(payload)[0]


def encode(spec: PointSpec, value) -> list[int]:
    """Registers for writing ``value`` (scale/add inverted, range-checked)."""
    spec = spec if isinstance(spec, PointSpec) else PointSpec(*spec)
    if spec.type == "string":
        if not isinstance(value, str):
            raise EncodeError(f"a string point takes a string, not {value!r}")
        b = value.encode("latin-1", errors="strict") if value.isascii() else value.encode("utf-8")
        cap = 2 * spec.length
        if len(b) > cap:
            raise EncodeError(f"string of {len(b)} bytes does not fit {spec.length} registers")
        b = b.ljust(cap, b"\0")
        if spec.order in ("BADC", "DCBA"):
            b = bytes(x for pair in zip(b[1::2], b[0::2]) for x in pair)
        return list(struct.unpack(f">{spec.length}H", b))
    c = ffi.new("gw_spec *")
    _fill(c, spec)
    regs = ffi.new("uint16_t[4]")
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise EncodeError(f"{value} does not fit a 64-bit register value")
        if value >= (1 << 63):
            rc = lib.gw_encode(c, float(value), value - (1 << 64), 2, regs, 4)
        else:
            rc = lib.gw_encode(c, float(value), value, 1, regs, 4)
    elif isinstance(value, float):
        rc = lib.gw_encode(c, value, 0, 0, regs, 4)
    else:
        raise EncodeError(f"cannot write {value!r} to a {spec.type} point")
    if rc == -1:
        raise EncodeError(f"{value!r} is out of range for {spec.type}"
                          + (f" (after scale {spec.scale:g}, add {spec.add:g})" if spec.scale != 1 or spec.add else ""))
    if rc == -2:
        raise EncodeError(f"{value!r} is not a finite number")
    if rc < 0:
        raise EncodeError(f"cannot encode a {spec.type} point")
    return list(regs[0:rc])


def mask_write(spec: PointSpec, value) -> tuple[int, int]:
    """(and_mask, or_mask) for FC22: result = (current AND and_mask) OR (or_mask AND NOT and_mask)."""
    spec = spec if isinstance(spec, PointSpec) else PointSpec(*spec)
    if spec.bit_offset is not None:
        if not 0 <= spec.bit_offset < 16:
            raise EncodeError("FC22 mask-write works on one register: bit_offset must be 0..15")
        bit = 1 << spec.bit_offset
        return (~bit) & 0xFFFF, bit if value else 0
    if spec.bit_mask is not None:
        mask = spec.bit_mask
        if mask > 0xFFFF:
            raise EncodeError("FC22 mask-write works on one register: bit_mask must fit 16 bits")
        shift = (mask & -mask).bit_length() - 1
        v = int(value)
        if v < 0 or (v << shift) & ~mask:
            raise EncodeError(f"{value!r} does not fit the field of mask 0x{mask:04X}")
        return (~mask) & 0xFFFF, (v << shift) & mask
    raise EncodeError("mask_write needs a point with bit_offset or bit_mask")
