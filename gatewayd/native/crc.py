"""CRCs: Modbus CRC-16, MS/TP header CRC-8 and data CRC-16, CRC-32K (extended MS/TP frames)."""

from ._bindings import lib

__all__ = ["crc16_modbus", "mstp_header_crc", "mstp_data_crc", "crc32k"]


def crc16_modbus(data: bytes) -> int:
    """Modbus RTU CRC-16 (init 0xFFFF, reflected 0x8005); sent low byte first."""
    return lib.gw_crc16_modbus(data, len(data))


def mstp_header_crc(data: bytes) -> int:
    """MS/TP header CRC-8 over frame type..length (5 octets), ones-complemented as transmitted."""
    return lib.gw_mstp_header_crc(data, len(data))


def mstp_data_crc(data: bytes) -> int:
    """MS/TP data CRC-16 (CCITT, reflected, init 0xFFFF), ones-complemented; sent low byte first."""
    return lib.gw_mstp_data_crc(data, len(data))


def crc32k(data: bytes) -> int:
    """CRC-32K (Koopman, reflected 0xEB31D82E, init 0xFFFFFFFF), ones-complemented; sent low byte first."""
    return lib.gw_crc32k(data, len(data))
