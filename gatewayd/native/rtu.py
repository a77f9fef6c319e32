"""Modbus RTU framing: CRC, request frames, and a sans-IO response scanner.

:class:`RtuResponseScanner` knows the request it waits for (unit, function and,
for reads, the byte count or, for writes, the whole response length) and finds
the response in whatever the serial line delivers: noise before it, a late
answer to an earlier request, a frame with a bad CRC. The first complete
candidate with a good CRC wins; every rejected candidate is counted once
(``bad_crc``) and every octet dropped (``garbage_bytes``). Exception responses
(``function | 0x80``, five octets) are always recognized. Without ``byte_count``
or ``fixed_length`` the length is taken from the function's layout: the byte
count of FC1-4/12/17/20/21/23, the FIFO count of FC24, the object list of FC43
(MEI 14), the fixed size of FC5/6/7/8/11/15/16/22; for any other function the
shortest CRC-valid length wins. Memory is one fixed C struct; work is linear in
the octets fed (bounded rescans of at most one pending frame).

Example::

    sc = RtuResponseScanner(17, 3, byte_count=2 * count)
    while (res := sc.feed(await port.receive_some())) is None: ...
    if res.exception_code is not None: ...
"""

from __future__ import annotations

from typing import NamedTuple

from ._bindings import ffi, lib

__all__ = ["crc16", "frame", "RtuResult", "RtuResponseScanner", "expected_response_length"]

_FIXED = {5: 8, 6: 8, 7: 5, 8: 8, 11: 8, 15: 8, 16: 8, 22: 10}
_COUNTED = frozenset((1, 2, 3, 4, 12, 17, 20, 21, 23))


def crc16(data) -> int:
    """Modbus CRC-16 (sent low octet first)."""
    return lib.gw_crc16_modbus(data if type(data) is bytes else ffi.from_buffer("uint8_t[]", data), len(data))


def frame(unit: int, pdu: bytes) -> bytes:
    """The RTU frame ``unit + pdu + CRC`` (CRC low octet first)."""
    if not 0 <= unit <= 255:
        raise ValueError(f"unit must be 0..255, got {unit}")
    if not 1 <= len(pdu) <= 253:
        raise ValueError(f"a Modbus PDU has 1..253 octets, got {len(pdu)}")
    body = bytes((unit,)) + bytes(pdu)
    c = lib.gw_crc16_modbus(body, len(body))
    return body + bytes((c & 0xFF, c >> 8))


def expected_response_length(function: int, quantity: int = 0) -> int | None:
    """Whole RTU response length (unit .. CRC) of a normal response; None when the device decides.

    ``quantity``: coils/inputs for FC1/2, registers for FC3/4/23.
    """
    if function in (1, 2):
        return 5 + (quantity + 7) // 8
    if function in (3, 4, 23):
        return 5 + 2 * quantity
    return _FIXED.get(function)


class RtuResult(NamedTuple):
    unit: int
    function: int                 # as received: function | 0x80 for an exception response
    pdu: bytes                    # function code + data, without unit and CRC
    exception_code: int | None    # None for a normal response


class RtuResponseScanner:
    """Find the response to one request in a byte stream (see the module docstring)."""

    def __init__(self, unit: int, function: int, *, byte_count: int | None = None,
                 fixed_length: int | None = None) -> None:
        self._rx = ffi.new("gw_rtu_rx *")
        lib.gw_rtu_rx_init(self._rx)
        self._consumed = ffi.new("size_t *")
        self.reset(unit, function, byte_count=byte_count, fixed_length=fixed_length)

    def reset(self, unit: int, function: int, *, byte_count: int | None = None,
              fixed_length: int | None = None) -> None:
        """Expect the response to the next request; octets still buffered are dropped (garbage)."""
        if not (0 <= unit <= 255 and 1 <= function <= 127):
            raise ValueError(f"unit must be 0..255 and function 1..127, got {unit}, {function}")
        if byte_count is not None and not 0 <= byte_count <= 251:
            raise ValueError(f"byte_count must be 0..251, got {byte_count}")
        if fixed_length is not None and not 4 <= fixed_length <= 256:
            raise ValueError(f"fixed_length (whole frame) must be 4..256, got {fixed_length}")
        if fixed_length is not None:
            mode, expect = lib.GW_RTU_FIXED, fixed_length
        elif byte_count is not None:
            mode, expect = lib.GW_RTU_COUNT, byte_count
        elif function in _COUNTED:
            mode, expect = lib.GW_RTU_ANY_COUNT, 0
        elif function in _FIXED:
            mode, expect = lib.GW_RTU_FIXED, _FIXED[function]
        elif function == 24:
            mode, expect = lib.GW_RTU_FIFO, 0
        elif function == 43:
            mode, expect = lib.GW_RTU_DEVICE_ID, 0
        else:
            mode, expect = lib.GW_RTU_VARIABLE, 0
        self.unit, self.function = unit, function
        if getattr(self, "_rest", b""):
            self._rx.garbage += len(self._rest)
        self._rest = b""
        lib.gw_rtu_rx_expect(self._rx, unit, function, mode, expect)

    def feed(self, chunk) -> RtuResult | None:
        """The response, once ``chunk`` completes it; octets after it wait for the next :meth:`feed`."""
        if self._rest:
            chunk = self._rest + bytes(chunk)
            self._rest = b""
        n = len(chunk)
        if not n:
            return None
        rx = self._rx
        if lib.gw_rtu_rx_feed(rx, chunk if type(chunk) is bytes else ffi.from_buffer("uint8_t[]", chunk), n,
                              self._consumed) != lib.GW_RTU_FOUND:
            return None
        used = self._consumed[0]
        if used < n:
            self._rest = bytes(chunk[used:])
        f = ffi.buffer(rx.buf, rx.frame_len)[:]
        exc = f[2] if f[1] & 0x80 else None
        return RtuResult(f[0], f[1], f[1:-2], exc)

    @property
    def bad_crc(self) -> int:
        """Candidates rejected by their CRC (since creation)."""
        return self._rx.bad_crc

    @property
    def garbage_bytes(self) -> int:
        """Octets dropped without being part of a response (since creation)."""
        return self._rx.garbage
