"""MS/TP frames (BACnet clause 9): encoder and a streaming, sans-IO receiver.

Frame types 0-7 are the standard frames, 8-31 reserved, 32-127 extended
(COBS-encoded data with CRC-32K, for APDUs up to 1497 octets and more), 128-255
proprietary. The receiver takes arbitrary chunks; call :meth:`MstpReceiver.silence`
when the line has been quiet for T_frame_abort so a frame in progress is reported
as truncated.
"""

from __future__ import annotations

from typing import NamedTuple

from ._bindings import ffi, lib

__all__ = ["Frame", "MstpError", "MstpReceiver", "encode_frame", "MAX_EXTENDED_DATA"]

MAX_EXTENDED_DATA = 2032  # largest data the clause-9 extended frame allows before COBS overhead

_ERRORS = {lib.GW_EV_HEADER_CRC: "header_crc", lib.GW_EV_DATA_CRC: "data_crc", lib.GW_EV_OVERSIZE: "oversize",
           lib.GW_EV_TRUNCATED: "truncated"}


class Frame(NamedTuple):
    frame_type: int
    dest: int
    src: int
    data: bytes


class MstpError(NamedTuple):
    kind: str        # header_crc | data_crc | oversize | truncated
    frame_type: int | None = None
    dest: int | None = None
    src: int | None = None


def encode_frame(frame_type: int, dest: int, src: int, data: bytes = b"") -> bytes:
    """A complete frame: preamble, header with CRC-8, data with CRC-16 (or COBS + CRC-32K for 32-127)."""
    for name, v in (("frame_type", frame_type), ("dest", dest), ("src", src)):
        if not 0 <= v <= 255:
            raise ValueError(f"{name} must be 0..255, got {v}")
    data = bytes(data)
    ext = 32 <= frame_type <= 127
    if ext and not 1 <= len(data) <= MAX_EXTENDED_DATA:
        raise ValueError(f"extended frames carry 1..{MAX_EXTENDED_DATA} data octets, got {len(data)}")
    if not ext and frame_type < 128 and len(data) > 501:
        raise ValueError(f"frame type {frame_type} carries at most 501 data octets, got {len(data)} "
                         "(use an extended frame type 32-127)")
    if len(data) > 0xFFFF:
        raise ValueError("data too long")
    size = 8 + len(data) + len(data) // 254 + 16
    out = ffi.new("uint8_t[]", size)
    n = lib.gw_mstp_encode(frame_type, dest, src, data, len(data), out, size)
    if n == 0:
        raise ValueError("frame could not be encoded (data too long for its type)")
    return bytes(ffi.buffer(out, n))


class MstpReceiver:
    """Feed bytes, get frames. O(bytes), bounded memory (one frame buffer)."""

    def __init__(self, max_data: int = 1497) -> None:
        if not 0 <= max_data <= 2043:
            raise ValueError("max_data must be 0..2043")
        self._rx = ffi.new("gw_mstp_rx *")
        lib.gw_mstp_rx_init(self._rx, max_data)
        self._consumed = ffi.new("size_t *")

    def _frame(self) -> Frame:
        rx = self._rx
        return Frame(rx.frame_type, rx.dest, rx.src, bytes(ffi.buffer(rx.buf, rx.data_len)))

    def feed(self, chunk: bytes, with_errors: bool = False) -> list:
        """Frames completed by ``chunk`` (and :class:`MstpError` items, in order, if ``with_errors``)."""
        out = []
        buf = ffi.from_buffer(chunk)
        n = len(chunk)
        pos = 0
        rx = self._rx
        consumed = self._consumed
        feed = lib.gw_mstp_rx_feed
        while True:
            ev = feed(rx, buf + pos, n - pos, consumed)
            pos += consumed[0]
            if ev == lib.GW_EV_FRAME:
                out.append(self._frame())
            elif ev != lib.GW_EV_NONE:
                if with_errors:
                    out.append(MstpError(_ERRORS[ev], rx.frame_type, rx.dest, rx.src))
            elif pos >= n:
                return out

    def silence(self) -> MstpError | None:
        """The line went quiet: report a frame in progress as truncated."""
        ev = lib.gw_mstp_rx_silence(self._rx)
        return MstpError("truncated") if ev == lib.GW_EV_TRUNCATED else None

    @property
    def counters(self) -> dict:
        rx = self._rx
        return {"frames": rx.frames, "header_crc": rx.header_crc, "data_crc": rx.data_crc,
                "oversize": rx.oversize, "truncated": rx.truncated, "garbage_bytes": rx.garbage}

    errors = counters
