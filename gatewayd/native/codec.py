"""Register decoding and encoding: one C call decodes every point of a block.

Types: ``bool``, ``int16``/``uint16``, ``int32``/``uint32``, ``int64``/``uint64``,
``float32``/``float64``, ``string`` (``length`` registers, latin-1, trailing NULs
trimmed). Payloads are the register bytes as on the wire (big-endian 16-bit
registers, e.g. a pymodbus response's bytes) or, with ``bits=True``, packed bits
LSB first (coils/discretes; ``offset`` is then a bit offset).

Orders say where the value's big-endian byte image ``A B C D`` (``A`` most
significant; 64-bit ``A .. H``) sits in the registers ``r0 r1 ..`` on the wire:

=====  ======================================  ==================================
order  32-bit (r0, r1)                         64-bit (r0, r1, r2, r3)
=====  ======================================  ==================================
ABCD   (AB, CD): Modbus standard, big-endian   (AB, CD, EF, GH)
CDAB   (CD, AB): word swap, "least             (GH, EF, CD, AB): registers
       significant register first"             reversed
BADC   (BA, DC): bytes swapped in registers    (BA, DC, FE, HG)
DCBA   (DC, BA): fully little-endian           (HG, FE, DC, BA)
=====  ======================================  ==================================

16-bit values: ABCD = CDAB (AB), BADC = DCBA (BA). Strings follow the byte swap
only (BADC/DCBA swap the two characters of each register).

``bit_offset`` extracts one bit of the value (bit 0 = least significant) as a bool;
``bit_mask`` extracts a field: ``(raw & mask) >> trailing_zeros(mask)`` (unsigned;
a ``bool`` point with a mask is ``field != 0``). ``scale``/``add`` give
``value = raw * scale + add`` as a float; with scale 1 and add 0 integer types
stay ``int``.

Writes: :func:`encode` gives the registers for a value (scale/add inverted, the
result rounded and range-checked; :class:`EncodeError` says what is wrong);
:func:`mask_write` gives the FC22 masks for ``bit_offset``/``bit_mask`` points:
the device computes ``(current AND and_mask) OR (or_mask AND NOT and_mask)``.

Example::

    dec = BlockDecoder([PointSpec(0, "float32", "CDAB"), PointSpec(2, "uint16", bit_offset=3)])
    values, status = dec.decode_into(payload)   # status[i] == MISSING: beyond a short payload
"""

from __future__ import annotations

import math
from array import array
from operator import itemgetter
from typing import NamedTuple, Sequence

from ._bindings import ffi, lib

__all__ = ["PointSpec", "BlockDecoder", "EncodeError", "encode", "mask_write", "mask_write_at", "TYPES",
           "ORDERS", "WIDTHS", "MISSING", "RANGES", "FLOAT_RANGES"]

TYPES = {"bool": lib.GW_T_BOOL, "int16": lib.GW_T_INT16, "uint16": lib.GW_T_UINT16, "int32": lib.GW_T_INT32,
         "uint32": lib.GW_T_UINT32, "int64": lib.GW_T_INT64, "uint64": lib.GW_T_UINT64,
         "float32": lib.GW_T_FLOAT32, "float64": lib.GW_T_FLOAT64, "string": lib.GW_T_STRING}
WIDTHS = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2,
          "float64": 4}
ORDERS = {"ABCD": lib.GW_O_ABCD, "CDAB": lib.GW_O_CDAB, "BADC": lib.GW_O_BADC, "DCBA": lib.GW_O_DCBA}
FLOAT_RANGES = {"float32": (-3.4028234663852886e38, 3.4028234663852886e38),
                "float64": (-1.7976931348623157e308, 1.7976931348623157e308)}
RANGES = {"int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
          "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
          "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1)}
_RANGES = RANGES  # the raw range of each integer type (what a write can carry)

# status values of decode_into (the C "kinds"); MISSING marks a point beyond a short payload
_K_FLOAT, _K_INT, _K_BIGINT, _K_BOOL, _K_STRING = (lib.GW_K_FLOAT, lib.GW_K_INT, lib.GW_K_BIGINT, lib.GW_K_BOOL,
                                                  lib.GW_K_STRING)
MISSING = lib.GW_K_MISSING
_K_UINT64 = lib.GW_K_UINT64


class EncodeError(ValueError):
    """A value that cannot be written to the point's registers (range, NaN, type, field)."""


class PointSpec(NamedTuple):
    offset: int                     # register offset in the block (bit offset for coil/discrete blocks)
    type: str
    order: str = "ABCD"
    bit_offset: int | None = None
    bit_mask: int | None = None
    scale: float = 1.0
    add: float = 0.0
    length: int | None = None       # registers, for strings

    @property
    def registers(self) -> int:
        return (self.length or 0) if self.type == "string" else WIDTHS[self.type]


def _check(s: PointSpec, i: int = 0) -> PointSpec:
    s = s if isinstance(s, PointSpec) else PointSpec(*s)
    where = f"point {i}: " if i >= 0 else ""
    if s.type not in TYPES:
        raise ValueError(f"{where}unknown type {s.type!r} (one of {', '.join(TYPES)})")
    if s.order not in ORDERS:
        raise ValueError(f"{where}unknown order {s.order!r} (ABCD, CDAB, BADC, DCBA)")
    if not isinstance(s.offset, int) or s.offset < 0:
        raise ValueError(f"{where}offset must be an int >= 0, got {s.offset!r}")
    if s.type == "string":
        if not (isinstance(s.length, int) and 1 <= s.length <= 125):
            raise ValueError(f"{where}a string needs length (registers) 1..125, got {s.length!r}")
        if s.bit_offset is not None or s.bit_mask is not None:
            raise ValueError(f"{where}bit_offset/bit_mask do not apply to strings")
    nbits = 16 * WIDTHS.get(s.type, 1)
    if s.bit_offset is not None and not (isinstance(s.bit_offset, int) and 0 <= s.bit_offset < nbits):
        raise ValueError(f"{where}bit_offset {s.bit_offset!r} outside the {s.type} value's {nbits} bits")
    if s.bit_mask is not None and not (isinstance(s.bit_mask, int) and 0 < s.bit_mask < (1 << nbits)):
        raise ValueError(f"{where}bit_mask must be a non-zero mask within the {s.type} value's {nbits} bits")
    if s.bit_offset is not None and s.bit_mask is not None:
        raise ValueError(f"{where}give bit_offset or bit_mask, not both")
    if not (math.isfinite(s.scale) and s.scale != 0 and math.isfinite(s.add)):
        raise ValueError(f"{where}scale must be finite and non-zero, add finite")
    return s


def _fill(c, s: PointSpec) -> None:
    c.offset = s.offset
    c.type = TYPES[s.type]
    c.order = ORDERS[s.order]
    c.bit_offset = -1 if s.bit_offset is None else s.bit_offset
    c.bit_mask = s.bit_mask or 0
    c.scale = s.scale
    c.add = s.add
    c.length = s.length or 0


def _kind(s: PointSpec, bits: bool) -> int:
    """What the C decoder reports for this point when its registers are there (uint64 aside)."""
    if bits or s.type == "bool" or s.bit_offset is not None:
        return _K_BOOL
    if s.type == "string":
        return _K_STRING
    if s.type.startswith("float") or s.scale != 1.0 or s.add != 0.0:
        return _K_FLOAT
    return _K_INT


class BlockDecoder:
    """Compiled once per block layout (the spec array is packed into C memory once).

    :meth:`decode` returns one Python value per spec; :meth:`decode_into` also
    returns a status byte per point (``MISSING`` for a point beyond a short payload).
    """

    def __init__(self, specs: Sequence[PointSpec], *, bits: bool = False) -> None:
        self.specs = [_check(s, i) for i, s in enumerate(specs)]
        self.n = n = len(self.specs)
        self.bits = bool(bits)
        m = max(n, 1)
        self._c = ffi.new("gw_spec[]", m)
        for i, s in enumerate(self.specs):
            _fill(self._c[i], s)
        self._values = array("d", bytes(8 * m))
        self._ivalues = array("q", bytes(8 * m))
        self._kinds = bytearray(m)
        self._vp = ffi.from_buffer("double[]", self._values)
        self._ip = ffi.from_buffer("int64_t[]", self._ivalues)
        self._kp = ffi.from_buffer("uint8_t[]", self._kinds)
        self._strbuf = bytearray(0)
        self._sp = ffi.NULL
        if not bits and any(s.type == "string" for s in self.specs):
            self._strbuf = bytearray(2 * max(s.offset + s.registers for s in self.specs))
            self._sp = ffi.from_buffer("uint8_t[]", self._strbuf)
        # The layout's status bytes for a full payload are known now; when a decode matches them the values
        # are picked from the float or the integer array by one precomputed itemgetter.
        kinds = [_kind(s, self.bits) for s in self.specs]
        self._expect = bytes(kinds)
        self._all_bools = bool(n) and len(kinds) == kinds.count(_K_BOOL)
        picks = [n + i if k == _K_INT else i for i, k in enumerate(kinds)]
        self._pick = itemgetter(*picks) if n > 1 else (lambda seq, _i=picks[0] if picks else 0: (seq[_i],))
        self._bools = [i for i, k in enumerate(kinds) if k == _K_BOOL]
        self._strings = [i for i, k in enumerate(kinds) if k == _K_STRING]

    def decode_into(self, payload) -> tuple[list, bytes]:
        """(values, status): status[i] == ``MISSING`` (value None) for a point beyond the payload."""
        n = self.n
        if not n:
            return [], b""
        size = len(payload)
        if self._strings and len(self._strbuf) < size:
            # a new buffer, never a resize: cffi still exports the old one (resizing it raises BufferError)
            self._strbuf = bytearray(size)
            self._sp = ffi.from_buffer("uint8_t[]", self._strbuf)
        buf = payload if type(payload) is bytes else ffi.from_buffer("uint8_t[]", payload)
        lib.gw_decode(self._c, n, buf, size, self.bits, self._vp, self._ip, self._kp, self._sp)
        d = self._values.tolist()
        if self._kinds == self._expect:
            if self._all_bools:
                return list(map(bool, d)), self._expect
            vals = list(self._pick(d + self._ivalues.tolist()))
            for i in self._bools:
                vals[i] = vals[i] != 0.0
            for i in self._strings:
                at = self._ivalues[i]
                vals[i] = self._strbuf[at: at + int(d[i])].decode("latin-1")
            return vals, self._expect
        kinds = bytes(self._kinds[:n])
        q = self._ivalues
        vals = d[:n]
        for i, k in enumerate(kinds):
            if k == _K_INT or k == _K_BIGINT:
                vals[i] = q[i]
            elif k == _K_BOOL:
                vals[i] = vals[i] != 0.0
            elif k == _K_STRING:
                at = q[i]
                vals[i] = self._strbuf[at: at + int(vals[i])].decode("latin-1")
            elif k == MISSING:
                vals[i] = None
            elif k == _K_UINT64:
                vals[i] = q[i] & 0xFFFFFFFFFFFFFFFF
        return vals, kinds

    def decode(self, payload) -> list:
        """Values in spec order; ``None`` for points whose registers the payload does not hold."""
        return self.decode_into(payload)[0]


def _image_to_regs(raw: int, nregs: int, order: str) -> list[int]:
    img = raw.to_bytes(2 * nregs, "big")
    regs = [img[2 * r: 2 * r + 2] for r in range(nregs)]
    if order in ("CDAB", "DCBA"):
        regs.reverse()
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


def _unscale(spec: PointSpec, value) -> int:
    """The raw integer for a field value (scale/add inverted, rounded)."""
    if isinstance(value, bool) or (isinstance(value, int) and spec.scale == 1.0 and spec.add == 0.0):
        return int(value)
    if not isinstance(value, (int, float)):
        raise EncodeError(f"cannot write {value!r} to a {spec.type} point")
    x = (value - spec.add) / spec.scale
    if not math.isfinite(x):
        raise EncodeError(f"{value!r} is not a finite number")
    return round(x)


def encode(spec: PointSpec, value) -> list[int]:
    """Registers (wire order) for writing ``value``: scale/add inverted, rounded to the type, range-checked."""
    spec = _check(spec, -1)
    if spec.type == "string":
        if not isinstance(value, str):
            raise EncodeError(f"a string point takes a str, not {value!r}")
        try:
            b = value.encode("latin-1")
        except UnicodeEncodeError:
            raise EncodeError(f"{value!r} has characters outside latin-1") from None
        cap = 2 * spec.length
        if len(b) > cap:
            raise EncodeError(f"a string of {len(b)} characters does not fit {spec.length} registers")
        b = b.ljust(cap, b"\0")
        if spec.order in ("BADC", "DCBA"):
            b = bytes(x for pair in zip(b[1::2], b[0::2]) for x in pair)
        return [int.from_bytes(b[i: i + 2], "big") for i in range(0, cap, 2)]
    if spec.bit_offset is not None or spec.bit_mask is not None:
        raise EncodeError("a bit_offset/bit_mask point shares its register: write it with mask_write (FC22)")
    c = ffi.new("gw_spec *")
    _fill(c, spec)
    regs = ffi.new("uint16_t[4]")
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 64):
            raise EncodeError(f"{value} is out of range for {spec.type}")
        if value >= (1 << 63):
            rc = lib.gw_encode(c, float(value), value - (1 << 64), 2, regs, 4)
        else:
            rc = lib.gw_encode(c, float(value), value, 1, regs, 4)
    elif isinstance(value, float):
        rc = lib.gw_encode(c, value, 0, 0, regs, 4)
    else:
        raise EncodeError(f"cannot write {value!r} to a {spec.type} point")
    if rc == -1:
        scaled = f" (after scale {spec.scale:g}, add {spec.add:g})" if spec.scale != 1 or spec.add else ""
        lo_hi = _RANGES.get(spec.type)
        limits = f" {lo_hi[0]}..{lo_hi[1]}" if lo_hi else ""
        raise EncodeError(f"{value!r} is out of range for {spec.type}{limits}{scaled}")
    if rc == -2:
        raise EncodeError(f"{value!r} is not a finite number (a {spec.type} point needs one)")
    if rc < 0:  # pragma: no cover - types are checked above
        raise EncodeError(f"cannot encode a {spec.type} point")
    return list(regs[0:rc])


def mask_write_at(spec: PointSpec, value) -> tuple[int, int, int]:
    """FC22 for a ``bit_offset``/``bit_mask`` point: ``(register, and_mask, or_mask)``, ``register``
    counted from the point's first register (the field may sit in another one for 32/64-bit types or
    word-swapped orders). Raises :class:`EncodeError` when the field spans two registers."""
    spec = _check(spec, -1)
    nregs = WIDTHS[spec.type] if spec.type != "string" else 0
    if spec.bit_offset is not None:
        if not isinstance(value, (bool, int, float)):
            raise EncodeError(f"cannot write {value!r} to a bit of a {spec.type} point")
        mask = 1 << spec.bit_offset
        field = mask if value else 0
    elif spec.bit_mask is not None:
        mask = spec.bit_mask
        shift = (mask & -mask).bit_length() - 1
        if spec.type == "bool":
            field = mask if value else 0
        else:
            v = _unscale(spec, value)
            if v < 0 or (v << shift) & ~mask:
                raise EncodeError(f"{value!r} does not fit the field of mask 0x{mask:X}")
            field = v << shift
    else:
        raise EncodeError("mask_write needs a point with bit_offset or bit_mask")
    masks = _image_to_regs(mask, nregs, spec.order)
    fields = _image_to_regs(field, nregs, spec.order)
    touched = [r for r, m in enumerate(masks) if m]
    if len(touched) != 1:
        raise EncodeError(f"the field of mask 0x{mask:X} spans {len(touched)} registers; FC22 changes one")
    r = touched[0]
    return r, (~masks[r]) & 0xFFFF, fields[r]


def mask_write(spec: PointSpec, value) -> tuple[int, int]:
    """``(and_mask, or_mask)`` for FC22 on the point's (first) register:
    result = (current AND and_mask) OR (or_mask AND NOT and_mask). Raises :class:`EncodeError` when the
    field is not in that register (see :func:`mask_write_at`)."""
    r, and_mask, or_mask = mask_write_at(spec, value)
    if r:
        raise EncodeError(f"the field lies in register +{r} of the point, not its first: use mask_write_at")
    return and_mask, or_mask
