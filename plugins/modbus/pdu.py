"""The one module that touches pymodbus: request PDUs and MBAP (TCP) framing.

pymodbus changes APIs inside 3.x (pinned to 3.16 in pyproject.toml); keeping it behind
this module means an upgrade touches one file. Read responses are not decoded into
Python lists here: the raw register bytes go straight to the native block decoder.
"""

from __future__ import annotations

from typing import NamedTuple

from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (ReadCoilsRequest, ReadDiscreteInputsRequest, WriteMultipleCoilsRequest,
                                      WriteSingleCoilRequest)
from pymodbus.pdu.register_message import (MaskWriteRegisterRequest, ReadHoldingRegistersRequest,
                                           ReadInputRegistersRequest, WriteMultipleRegistersRequest,
                                           WriteSingleRegisterRequest)

__all__ = ["Response", "ModbusException", "ProtocolError", "TcpFraming", "read_request", "write_request",
           "mask_write_request", "EXCEPTION_TEXT"]

READ_CLASSES = {0: ReadCoilsRequest, 1: ReadDiscreteInputsRequest, 2: ReadHoldingRegistersRequest,
                3: ReadInputRegistersRequest}

EXCEPTION_TEXT = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                  4: "server device failure", 5: "acknowledge", 6: "server device busy",
                  8: "memory parity error", 10: "gateway path unavailable", 11: "gateway target failed to respond"}


class ModbusException(Exception):
    """The device answered with a Modbus exception."""

    def __init__(self, function: int, code: int) -> None:
        super().__init__(f"exception {code} ({EXCEPTION_TEXT.get(code, 'unknown')}) to function {function}")
        self.function = function
        self.code = code


class ProtocolError(Exception):
    """An answer that is not the answer to our request (invalid response)."""


class Response(NamedTuple):
    function: int
    data: bytes          # PDU after the function code


def read_request(table: int, unit: int, address: int, count: int, tid: int = 0) -> ModbusPDU:
    return READ_CLASSES[table](dev_id=unit, transaction_id=tid, address=address, count=count)


def write_request(table: int, unit: int, address: int, values: list, tid: int = 0) -> ModbusPDU:
    """FC5/FC15 for coils, FC6/FC16 for registers, chosen by the number of values."""
    if table == 0:
        if len(values) == 1:
            return WriteSingleCoilRequest(dev_id=unit, transaction_id=tid, address=address, bits=[bool(values[0])])
        return WriteMultipleCoilsRequest(dev_id=unit, transaction_id=tid, address=address,
                                         bits=[bool(v) for v in values])
    if table == 2:
        if len(values) == 1:
            return WriteSingleRegisterRequest(dev_id=unit, transaction_id=tid, address=address, registers=values)
        return WriteMultipleRegistersRequest(dev_id=unit, transaction_id=tid, address=address, registers=values)
    raise ValueError("only coils and holding registers are writable")


def mask_write_request(unit: int, address: int, and_mask: int, or_mask: int, tid: int = 0) -> ModbusPDU:
    return MaskWriteRegisterRequest(dev_id=unit, transaction_id=tid, address=address, and_mask=and_mask,
                                    or_mask=or_mask)


class TcpFraming:
    """MBAP framing with transaction ids; ``parse`` returns (used, Response|None)."""

    def __init__(self) -> None:
        self.framer = FramerSocket(DecodePDU(False))
        self.tid = 0

    def next_tid(self) -> int:
        self.tid = self.tid % 0xFFFF + 1
        return self.tid

    def build(self, pdu: ModbusPDU) -> bytes:
        return self.framer.buildFrame(pdu)

    def parse(self, data: bytes, unit: int, tid: int) -> tuple[int, Response | None]:
        used, dev_id, got_tid, frame = self.framer.decode(data)
        if not used or not frame:
            return used, None
        if got_tid != tid or (unit and dev_id != unit):
            raise ProtocolError(f"answer for transaction {got_tid} unit {dev_id}, expected {tid} unit {unit}")
        fn = frame[0]
        if fn & 0x80:
            raise ModbusException(fn & 0x7F, frame[1] if len(frame) > 1 else 0)
        return used, Response(fn, bytes(frame[1:]))


def is_exception(pdu) -> bool:  # pragma: no cover - kept for diagnostics callers
    return isinstance(pdu, ExceptionResponse)
