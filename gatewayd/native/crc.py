"""CRCs: Modbus CRC-16, MS/TP header CRC-8 and data CRC-16, CRC-32K (extended MS/TP frames).

Each takes any bytes-like object and returns the value as transmitted (the
MS/TP ones are ones-complemented); multi-octet CRCs go on the wire low octet
first.
"""

from ._bindings import ffi, lib

__all__ = ["crc16_modbus", "mstp_header_crc", "mstp_data_crc", "crc32k"]


def _buf(data):
    return data if type(data) is bytes else ffi.from_buffer("uint8_t[]", data)


def crc16_modbus(data) -> int:
    """Modbus RTU CRC-16 (init 0xFFFF, reflected 0x8005); ``crc16_modbus(b"123456789") == 0x4B37``."""
    return lib.gw_crc16_modbus(_buf(data), len(data))


def mstp_header_crc(data) -> int:
    """MS/TP header CRC-8 (clause 9, Annex G.1) over frame type .. length (5 octets), as transmitted."""
    return lib.gw_mstp_header_crc(_buf(data), len(data))


def mstp_data_crc(data) -> int:
    """MS/TP data CRC-16 (CCITT reflected, init 0xFFFF; Annex G.2), ones-complemented as transmitted."""
    return lib.gw_mstp_data_crc(_buf(data), len(data))


def crc32k(data) -> int:
    """CRC-32K (Koopman, reflected 0xEB31D82E, init 0xFFFFFFFF; Annex G.3), ones-complemented as transmitted."""
    return lib.gw_crc32k(_buf(data), len(data))
