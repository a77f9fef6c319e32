"""MS/TP frames (BACnet clause 9): encoder and a streaming, sans-IO receiver.

Frame types 0-7 are the standard frames (8-31 reserved), 32-127 are extended
frames whose data is COBS-encoded (every octet XOR 0x55, so no preamble can
appear inside) and protected by CRC-32K (Addendum 135-2016bd, clause 9 in
135-2020): types 32/33 carry BACnet NPDUs of 502-1497 octets, 34 IPv6 (6LoBAC);
128-255 are proprietary (2-501 octets: vendor id, then data). A frame that is not
COBS-encoded carries at most 501 data octets.

:class:`MstpReceiver` takes arbitrary chunks (one octet or 64 KiB) and returns the
frames they complete. It hunts for the preamble through garbage; a bad header CRC,
bad data CRC (CRC-16 or CRC-32K), oversize Length, a truncated frame and a
malformed extended frame are each counted and, with ``feed(chunk,
with_errors=True)``, reported in stream order as :class:`MstpError` items. After
a bad frame it resyncs at once: a rejected header's octets are rescanned, an
oversize frame's data field is skipped as clause 9's SKIP_DATA does (when its
Length is one a legal frame can have), and a 0x55 inside an extended frame's
data (which a sender never produces) ends it as truncated and starts the next
preamble. The datalink calls :meth:`MstpReceiver.silence` when the line has been
quiet for T_frame_abort; a frame in progress is then reported as truncated.
Memory is one fixed C struct (~2 KiB); work is O(bytes).

Example::

    rx = MstpReceiver(max_data=1497)
    for item in rx.feed(serial_bytes, with_errors=True):
        if isinstance(item, Frame): ...
"""

from __future__ import annotations

from typing import NamedTuple

from ._bindings import ffi, lib

__all__ = ["Frame", "MstpError", "MstpReceiver", "encode_frame", "MAX_DATA", "MAX_EXTENDED_DATA",
           "is_extended"]

MAX_DATA = lib.GW_MSTP_MAX_DATA                # 501: frames that are not COBS-encoded
MAX_EXTENDED_DATA = lib.GW_MSTP_MAX_EXT_DATA   # 2032: COBS-encoded (Length <= 2043)

_EV_FRAME, _EV_NONE = lib.GW_EV_FRAME, lib.GW_EV_NONE
_KINDS = {lib.GW_EV_HEADER_CRC: "header_crc", lib.GW_EV_DATA_CRC: "data_crc", lib.GW_EV_OVERSIZE: "oversize",
          lib.GW_EV_TRUNCATED: "truncated", lib.GW_EV_MALFORMED: "malformed"}


def is_extended(frame_type: int) -> bool:
    """Types 32-127 are COBS-encoded with CRC-32K."""
    return 32 <= frame_type <= 127


class Frame(NamedTuple):
    frame_type: int
    dest: int
    src: int
    data: bytes


class MstpError(NamedTuple):
    """A rejected frame, in stream order. Header fields are None when the header itself was not good."""

    kind: str  # header_crc | data_crc | oversize | truncated | malformed
    frame_type: int | None = None
    dest: int | None = None
    src: int | None = None


def encode_frame(frame_type: int, dest: int, src: int, data: bytes = b"") -> bytes:
    """A complete frame: preamble, header and CRC-8, then data and CRC-16 — or, for types 32-127,
    COBS-encoded data and the COBS-encoded CRC-32K (Length = encoded length - 2)."""
    for name, v in (("frame_type", frame_type), ("dest", dest), ("src", src)):
        if not 0 <= v <= 255:
            raise ValueError(f"{name} must be 0..255, got {v}")
    data = bytes(data)
    n = len(data)
    if is_extended(frame_type):
        if not 1 <= n <= MAX_EXTENDED_DATA:
            raise ValueError(f"extended frame type {frame_type} carries 1..{MAX_EXTENDED_DATA} data octets, got {n}")
    elif n > MAX_DATA:
        raise ValueError(f"frame type {frame_type} carries at most {MAX_DATA} data octets, got {n} "
                         "(use an extended frame type 32-127)")
    elif frame_type >= 128 and n < 2:
        raise ValueError(f"a proprietary frame (type {frame_type}) starts with a 2-octet vendor id")
    size = lib.GW_MSTP_HEADER + n + n // 254 + 8
    out = ffi.new("uint8_t[]", size)
    k = lib.gw_mstp_encode(frame_type, dest, src, data, n, out, size)
    if k == 0:  # pragma: no cover - every refusal is checked above
        raise ValueError("frame could not be encoded")
    return ffi.buffer(out, k)[:]


class MstpReceiver:
    """Feed bytes, get frames; see the module docstring for the rules."""

    def __init__(self, max_data: int = 1497) -> None:
        if not 0 <= max_data <= MAX_EXTENDED_DATA:
            raise ValueError(f"max_data must be 0..{MAX_EXTENDED_DATA}")
        self.max_data = max_data
        self._rx = ffi.new("gw_mstp_rx *")
        lib.gw_mstp_rx_init(self._rx, max_data)
        self._consumed = ffi.new("size_t *")

    def _error(self, ev: int) -> MstpError:
        rx = self._rx
        if rx.hdr_ok:
            return MstpError(_KINDS[ev], rx.frame_type, rx.dest, rx.src)
        return MstpError(_KINDS[ev])

    def feed(self, chunk, with_errors: bool = False) -> list:
        """Frames completed by ``chunk``; with ``with_errors`` also :class:`MstpError` items, in order."""
        out = []
        n = len(chunk)
        if not n:
            return out
        rx, consumed, feed = self._rx, self._consumed, lib.gw_mstp_rx_feed
        # bytes go to C as they are (no copy); a view is made only when events split the chunk
        base = chunk if type(chunk) is bytes else ffi.from_buffer("uint8_t[]", chunk)
        ptr, pos = base, 0
        while True:
            ev = feed(rx, ptr, n - pos, consumed)
            pos += consumed[0]
            if ev == _EV_FRAME:
                out.append(Frame(rx.frame_type, rx.dest, rx.src, ffi.buffer(rx.buf, rx.data_len)[:]))
            elif ev != _EV_NONE and with_errors:
                out.append(self._error(ev))
            if pos >= n:
                return out
            if type(base) is bytes:
                base = ffi.from_buffer("uint8_t[]", chunk)
            ptr = base + pos

    def silence(self) -> MstpError | None:
        """The line was quiet for T_frame_abort: a frame in progress is reported (and counted) as truncated."""
        ev = lib.gw_mstp_rx_silence(self._rx)
        return self._error(ev) if ev != _EV_NONE else None

    @property
    def counters(self) -> dict:
        """frames, header_crc, data_crc, oversize, truncated, malformed, garbage_bytes (since creation)."""
        rx = self._rx
        return {"frames": rx.frames, "header_crc": rx.header_crc, "data_crc": rx.data_crc,
                "oversize": rx.oversize, "truncated": rx.truncated, "malformed": rx.malformed,
                "garbage_bytes": rx.garbage}

    errors = counters
