"""Modbus RTU framing: CRC, request frames, and a sans-IO response scanner."""

from __future__ import annotations

from typing import NamedTuple

from ._bindings import ffi, lib

__all__ = ["crc16", "frame", "RtuResult", "RtuResponseScanner", "expected_response_length"]


def crc16(data: bytes) -> int:
    return lib.gw_crc16_modbus(data, len(data))


def frame(unit: int, pdu: bytes) -> bytes:
    """``unit + pdu + CRC`` (low byte first)."""
    if not 0 <= unit <= 255:
        raise ValueError(f"unit must be 0..255, got {unit}")
    body = bytes([unit]) + bytes(pdu)
    c = lib.gw_crc16_modbus(body, len(body))
    return body + bytes((c & 0xFF, c >> 8))


def expected_response_length(function: int, quantity: int = 0) -> int | None:
    """Whole RTU response length (unit..CRC) for a normal response, None if variable."""
    if function in (1, 2):
        return 5 + (quantity + 7) // 8
    if function in (3, 4, 23):
        return 5 + 2 * quantity
    if function in (5, 6, 15, 16, 8):
        return 8
    if function == 22:
        return 10
    return None


class RtuResult(NamedTuple):
    unit: int
    function: int
    pdu: bytes                 # function code + data, without unit and CRC
    exception_code: int | None


class RtuResponseScanner:
    """Find the response to one request in a byte stream; garbage and bad CRCs are skipped and counted.

    ``byte_count`` for read responses (FC1-4, 23), ``fixed_length`` (whole frame) for
    FC5/6/8/15/16/22; neither for variable responses (FC24, FC43): the first
    CRC-valid length wins. Exception responses are always recognized.
    """

    MAX_BUFFER = 1024

    def __init__(self, unit: int, function: int, *, byte_count: int | None = None,
                 fixed_length: int | None = None) -> None:
        self._res = ffi.new("gw_rtu_result *")
        self.bad_crc = 0
        self.garbage_bytes = 0
        self.reset(unit, function, byte_count=byte_count, fixed_length=fixed_length)

    def reset(self, unit: int, function: int, *, byte_count: int | None = None,
              fixed_length: int | None = None) -> None:
        """Expect the response to the next request (the buffer is cleared)."""
        if not (0 <= unit <= 255 and 1 <= function <= 127):
            raise ValueError("unit must be 0..255 and function 1..127")
        if byte_count is not None and not 0 <= byte_count <= 255:
            raise ValueError("byte_count must be 0..255")
        self.unit, self.function = unit, function
        self._bc = -1 if byte_count is None else byte_count
        self._fixed = fixed_length or -1
        if byte_count is None and fixed_length is None and function in (1, 2, 3, 4, 23):
            self._bc = -2  # any byte count, taken from the frame
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> RtuResult | None:
        self._buf += chunk
        buf = bytes(self._buf)
        r = self._res
        st = lib.gw_rtu_scan(buf, len(buf), self.unit, self.function, self._bc, self._fixed, r)
        self.bad_crc += r.bad_crc
        if st == lib.GW_RTU_FOUND:
            self.garbage_bytes += r.start
            f = buf[r.start: r.start + r.length]
            del self._buf[: r.start + r.length]
            exc = r.exception if f[1] & 0x80 else None
            return RtuResult(f[0], f[1], f[1:-2], exc)
        if r.keep_from:
            self.garbage_bytes += r.keep_from
            del self._buf[: r.keep_from]
        if len(self._buf) > self.MAX_BUFFER:
            drop = len(self._buf) - self.MAX_BUFFER
            self.garbage_bytes += drop
            del self._buf[:drop]
        return None
