"""The one module that touches pymodbus: request PDUs, response parsing, MBAP framing.

pymodbus changes APIs inside 3.x (pinned to 3.16 in pyproject.toml); keeping it behind
this module means an upgrade touches one file. Requests are built by pymodbus's request
classes and handed to the transports as plain PDU bytes (function code + data): the TCP
transport wraps them with the strict MBAP framing below, the RTU transports with the native
``rtu.frame`` (CRC in C). Read responses are not decoded into Python lists here: the
raw register bytes go straight to the native block decoder.
"""

from __future__ import annotations

import logging
import struct
from typing import NamedTuple

from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import (ReadCoilsRequest, ReadDiscreteInputsRequest, WriteMultipleCoilsRequest,
                                      WriteSingleCoilRequest)
from pymodbus.pdu.diag_message import DiagnosticBase
from pymodbus.pdu.file_message import ReadFifoQueueRequest
from pymodbus.pdu.mei_message import ReadDeviceInformationRequest
from pymodbus.pdu.register_message import (MaskWriteRegisterRequest, ReadHoldingRegistersRequest,
                                           ReadInputRegistersRequest, ReadWriteMultipleRegistersRequest,
                                           WriteMultipleRegistersRequest, WriteSingleRegisterRequest)

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # its framer logs every partial frame

__all__ = ["Request", "ModbusException", "InvalidResponse", "Mbap", "read", "write", "mask_write",
           "read_write", "read_fifo", "diagnostic", "device_identification", "read_payload",
           "parse_fifo", "parse_diagnostic", "parse_device_identification", "check_echo", "EXCEPTION_TEXT",
           "DEVICE_ID_OBJECTS"]

EXCEPTION_TEXT = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                  4: "server device failure", 5: "acknowledge", 6: "server device busy",
                  8: "memory parity error", 10: "gateway path unavailable",
                  11: "gateway target device failed to respond"}

DEVICE_ID_OBJECTS = {0: "vendor", 1: "product_code", 2: "revision", 3: "vendor_url", 4: "product_name",
                     5: "model", 6: "application"}

_READ = {0: ReadCoilsRequest, 1: ReadDiscreteInputsRequest, 2: ReadHoldingRegistersRequest,
         3: ReadInputRegistersRequest}


class ModbusException(Exception):
    """The device answered with a Modbus exception (a clean answer: the link stays usable).

    ``unit`` (when known) lets the message name the unit id for the gateway codes 10/11."""

    kind = "exception"

    def __init__(self, function: int, code: int, unit: int | None = None) -> None:
        text = f"exception {code:02d} ({EXCEPTION_TEXT.get(code, 'unknown')}) to function {function}"
        hint = _EXCEPTION_HINT.get(code)
        if hint:
            text += ": " + hint.format(unit=unit if unit is not None else "N")
        super().__init__(text)
        self.function = function
        self.code = code
        self.unit = unit

    @property
    def is_busy(self) -> bool:
        """Exception 05/06: the device is working on something else; ask again later (not a refusal)."""
        return self.code in (5, 6)


_EXCEPTION_HINT = {
    10: "the gateway has no path to unit {unit}; check the gateway's routing and that unit {unit} is configured "
        "on it",
    11: "the gateway answered but unit {unit} behind it did not; is {unit} the right unit id, and is the device "
        "behind the gateway powered and wired?",
}


class InvalidResponse(Exception):
    """An answer that is not a valid answer to our request."""

    kind = "invalid"


class Request(NamedTuple):
    """A request PDU plus what its response looks like (for RTU end-of-frame detection)."""

    pdu: bytes                    # function code + data
    function: int
    byte_count: int | None = None  # reads: data bytes expected (None: take it from the frame)
    fixed_length: int | None = None  # whole RTU response length when fixed (writes, FC8, FC22)
    count: int = 0                # registers/bits requested (reads)


def _pdu(req) -> bytes:
    return bytes((req.function_code,)) + req.encode()


_READ_LIMIT = {0: (2000, "bits"), 1: (2000, "bits"), 2: (125, "registers"), 3: (125, "registers")}


def _check_span(address: int, count: int, limit: int, what: str) -> None:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= limit:
        raise ValueError(f"count {count!r} is out of range: one Modbus request reads 1 to {limit} {what}")
    if not isinstance(address, int) or isinstance(address, bool) or not 0 <= address <= 65535:
        raise ValueError(f"address {address!r} is out of range: Modbus addresses are 0 to 65535")
    if address + count > 65536:
        raise ValueError(f"address {address} + count {count} runs past the last address 65535")


def read(table: int, address: int, count: int) -> Request:
    """FC1/2/3/4 (``ValueError`` with one clear sentence for a count or address out of range)."""
    _check_span(address, count, *_READ_LIMIT[table])
    req = _READ[table](address=address, count=count)
    fc = req.function_code
    return Request(_pdu(req), fc, None, None, count)


def write(table: int, address: int, values: list, *, multiple: bool = False) -> Request:
    """FC5/FC15 for coils, FC6/FC16 for registers: single-value functions unless ``multiple``."""
    if table == 0:
        if len(values) == 1 and not multiple:
            req = WriteSingleCoilRequest(address=address, bits=[bool(values[0])])
        else:
            req = WriteMultipleCoilsRequest(address=address, bits=[bool(v) for v in values])
    elif table == 2:
        if len(values) == 1 and not multiple:
            req = WriteSingleRegisterRequest(address=address, registers=list(values))
        else:
            req = WriteMultipleRegistersRequest(address=address, registers=list(values))
    else:
        raise ValueError("only coils and holding registers are writable")
    return Request(_pdu(req), req.function_code, None, 8)


def mask_write(address: int, and_mask: int, or_mask: int) -> Request:
    """FC22: register = (register AND and_mask) OR (or_mask AND NOT and_mask)."""
    req = MaskWriteRegisterRequest(address=address, and_mask=and_mask, or_mask=or_mask)
    return Request(_pdu(req), 22, None, 10)


def read_write(read_address: int, read_count: int, write_address: int, values: list) -> Request:
    """FC23: write, then read, in one transaction."""
    req = ReadWriteMultipleRegistersRequest(read_address=read_address, read_count=read_count,
                                            write_address=write_address, write_registers=list(values))
    return Request(_pdu(req), 23, None, None, read_count)


def read_fifo(address: int) -> Request:
    """FC24: the queue behind a FIFO pointer register."""
    req = ReadFifoQueueRequest(address=address)
    return Request(_pdu(req), 24)


def diagnostic(sub_function: int, data: int | bytes = 0) -> Request:
    """FC8 with a sub-function (0 echo, 1 restart, 10 clear counters, 11..18 counters)."""
    req = DiagnosticBase(message=data)
    req.sub_function_code = sub_function
    pdu = _pdu(req)
    return Request(pdu, 8, None, len(pdu) + 3)  # the answer has the size of the request


def device_identification(read_code: int = 1, object_id: int = 0) -> Request:
    """FC43/14 Read Device Identification (1 basic, 2 regular, 3 extended, 4 one object)."""
    req = ReadDeviceInformationRequest(read_code=read_code, object_id=object_id)
    return Request(_pdu(req), 43)


# --------------------------------------------------------------------------- responses
_decoder = DecodePDU(False)


def read_payload(req: Request, pdu: bytes) -> bytes:
    """The register/bit bytes of a read (or FC23) response, checked strictly against the request.

    A *short* answer (fewer bytes than requested, but self-consistent: a whole number of
    registers) is returned as is; the decoder marks the points it does not hold. Anything
    else (other function, byte count that disagrees with the data, more data than asked
    for, half a register) raises :class:`InvalidResponse`."""
    if len(pdu) < 2 or pdu[0] != req.function:
        raise InvalidResponse(f"answer with function {pdu[0] if pdu else None} to a function {req.function} request")
    bc = pdu[1]
    if len(pdu) - 2 != bc:
        raise InvalidResponse(f"byte count {bc} but {len(pdu) - 2} data bytes")
    if req.function in (1, 2):
        want = (req.count + 7) // 8
    else:
        want = 2 * req.count
        if bc % 2:
            raise InvalidResponse(f"byte count {bc} is not a whole number of registers")
    if bc > want:
        raise InvalidResponse(f"{bc} data bytes in the answer, {want} asked for")
    if bc == 0 and want:
        raise InvalidResponse("an answer with no data")
    return pdu[2:]


def check_echo(req: Request, pdu: bytes) -> None:
    """Write responses echo the request (FC5/6/15/16 address+value/quantity, FC22 whole PDU)."""
    n = 5 if req.function in (5, 6, 15, 16) else len(req.pdu)
    if len(pdu) != n or pdu != req.pdu[:n]:
        raise InvalidResponse(f"write response {pdu.hex()} does not echo the request {req.pdu[:n].hex()}")


def _decode(pdu: bytes):
    try:
        msg = _decoder.decode(pdu)
    except Exception as e:  # pymodbus raises its own exception types from deep inside
        raise InvalidResponse(f"undecodable response {pdu.hex()}: {e}") from None
    if msg is None:
        raise InvalidResponse(f"undecodable response {pdu.hex()}")
    return msg


def parse_fifo(pdu: bytes) -> list[int]:
    """FC24 answer: byte count (2 bytes), FIFO count (2 bytes), then that many registers (at most 31)."""
    if len(pdu) < 5 or pdu[0] != 24:
        raise InvalidResponse(f"not a FIFO response: {pdu.hex()}")
    byte_count, n = struct.unpack(">HH", pdu[1:5])
    if n > 31 or byte_count != 2 + 2 * n or len(pdu) != 3 + byte_count:
        raise InvalidResponse(f"FIFO response with byte count {byte_count}, FIFO count {n} and "
                              f"{len(pdu) - 5} data bytes")
    return list(struct.unpack(f">{n}H", pdu[5:]))


def parse_diagnostic(req: Request, pdu: bytes) -> dict:
    if len(pdu) < 3 or pdu[0] != 8 or pdu[1:3] != req.pdu[1:3]:
        raise InvalidResponse(f"not the answer to diagnostic {req.pdu[1:3].hex()}: {pdu.hex()}")
    data = pdu[3:]
    out = {"sub_function": struct.unpack(">H", pdu[1:3])[0], "data": data.hex()}
    if len(data) == 2:
        out["value"] = struct.unpack(">H", data)[0]
    return out


def parse_device_identification(pdu: bytes) -> dict:
    """{"objects": {id: text}, "more_follows": bool, "next_object_id": int, "conformity": int}."""
    if len(pdu) < 7 or pdu[0] != 43 or pdu[1] != 14:
        raise InvalidResponse(f"not a device identification response: {pdu.hex()}")
    msg = _decode(pdu)
    objects = {}
    for oid, raw in msg.information.items():
        vals = raw if isinstance(raw, list) else [raw]
        objects[int(oid)] = " ".join(v.decode("utf-8", "replace") for v in vals)
    return {"objects": objects, "more_follows": bool(msg.more_follows), "next_object_id": msg.next_object_id,
            "conformity": msg.conformity}


MBAP_HEADER = 7        # transaction id, protocol id, length, unit id
MAX_PDU = 253


class Mbap:
    """MBAP (Modbus TCP) framing, checked strictly: the header is parsed here, not guessed at."""

    def __init__(self) -> None:
        self.tid = 0

    def build(self, unit: int, pdu: bytes) -> tuple[int, bytes]:
        self.tid = self.tid % 0xFFFF + 1
        return self.tid, struct.pack(">HHHB", self.tid, 0, len(pdu) + 1, unit) + pdu

    def parse(self, data: bytes) -> tuple[int, int, int, bytes]:
        """(used, unit, tid, pdu); used == 0 while the frame is incomplete.

        Raises :class:`InvalidResponse` for a header that cannot be Modbus (protocol id not 0,
        a length field below 2 or above 254): the stream is out of step and must be reopened."""
        if len(data) < MBAP_HEADER:
            if len(data) >= 4 and data[2:4] != b"\0\0":
                raise InvalidResponse(f"MBAP protocol id {bytes(data[2:4]).hex()} is not Modbus")
            return 0, 0, 0, b""
        tid, proto, length, unit = struct.unpack_from(">HHHB", data)
        if proto != 0:
            raise InvalidResponse(f"MBAP protocol id {proto:04x} is not Modbus")
        if not 2 <= length <= MAX_PDU + 1:
            raise InvalidResponse(f"MBAP length {length} is outside 2..{MAX_PDU + 1}")
        end = MBAP_HEADER - 1 + length
        if len(data) < end:
            return 0, 0, 0, b""
        return end, unit, tid, bytes(data[MBAP_HEADER:end])
