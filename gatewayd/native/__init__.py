"""Thin Python face over the cffi-built ``_native`` module (C sources in native/).

``crc``, ``mstp``, ``rtu``, ``planner``, ``codec``: each wrapper validates lengths
and arguments before crossing into C and turns return codes into exceptions or
per-item errors. The C functions are pure: no I/O, no allocation, no callbacks.
"""

from . import codec, crc, mstp, planner, rtu
from .codec import MISSING, BlockDecoder, EncodeError, PointSpec, encode, mask_write, mask_write_at
from .crc import crc16_modbus, crc32k, mstp_data_crc, mstp_header_crc
from .mstp import Frame, MstpError, MstpReceiver, encode_frame
from .planner import Block, Plan, PlanPoint, Table, plan
from .rtu import RtuResponseScanner, RtuResult, expected_response_length

__all__ = ["codec", "crc", "mstp", "planner", "rtu", "MISSING", "BlockDecoder", "EncodeError", "PointSpec",
           "encode", "mask_write", "mask_write_at", "crc16_modbus", "crc32k", "mstp_data_crc", "mstp_header_crc",
           "Frame", "MstpError", "MstpReceiver", "encode_frame", "Block", "Plan", "PlanPoint", "Table", "plan",
           "RtuResponseScanner", "RtuResult", "expected_response_length"]
