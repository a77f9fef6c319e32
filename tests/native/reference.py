"""Pure-Python reference implementations, written straight from the specifications, to test the C core against."""

from __future__ import annotations

import struct


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def mstp_header_crc(data: bytes) -> int:
    """BACnet clause 9 / Annex G: the standard's CalcHeaderCRC, then ones-complement."""
    crc = 0xFF
    for b in data:
        c = crc ^ b
        c = c ^ (c << 1) ^ (c << 2) ^ (c << 3) ^ (c << 4) ^ (c << 5) ^ (c << 6) ^ (c << 7)
        crc = ((c & 0xFE) ^ ((c >> 8) & 1)) & 0xFF
    return (~crc) & 0xFF


def mstp_data_crc(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return (~crc) & 0xFFFF


def crc32k(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEB31D82E if (b ^ crc) & 1 else crc >> 1
            b >>= 1
    return (~crc) & 0xFFFFFFFF


def cobs_encode(data: bytes, mask: int = 0x55) -> bytes:
    """COBS with a phantom zero at the end; a data end on a full 254-octet block adds no block."""
    out = bytearray()
    block = bytearray()
    for i, b in enumerate(data):
        if b == 0:
            out.append(len(block) + 1)
            out += block
            block = bytearray()
            continue
        block.append(b)
        if len(block) == 254:
            out.append(255)
            out += block
            block = bytearray()
            if i == len(data) - 1:
                return bytes(x ^ mask for x in out)
    out.append(len(block) + 1)
    out += block
    return bytes(x ^ mask for x in out)


def encode_frame(ftype: int, dest: int, src: int, data: bytes = b"") -> bytes:
    if 32 <= ftype <= 127:
        enc = cobs_encode(data)
        crc = crc32k(enc)
        ce = cobs_encode(struct.pack("<I", crc))
        body = enc + ce
        length = len(body) - 2
    else:
        body = data + (struct.pack("<H", mstp_data_crc(data)) if data else b"")
        length = len(data)
    hdr = bytes([ftype, dest, src, length >> 8, length & 0xFF])
    return b"\x55\xff" + hdr + bytes([mstp_header_crc(hdr)]) + body


def cobs_decode(enc: bytes, mask: int = 0x55) -> bytes | None:
    data = bytes(x ^ mask for x in enc)
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0 or i + code > len(data):
            return None
        out += data[i + 1: i + code]
        i += code
        if code != 255 and i < len(data):
            out.append(0)
    return bytes(out)


class MstpReceiver:
    """Byte-at-a-time reference receiver with the same resync rules as the C one."""

    def __init__(self, max_data: int = 1497):
        self.max_data = max_data
        self.state = "idle"
        self.events = []
        self.garbage = 0

    def feed(self, data: bytes) -> list:
        out = []
        queue = list(data)
        while queue:
            b = queue.pop(0)
            if self.state == "idle":
                if b == 0x55:
                    self.state = "pre"
                else:
                    self.garbage += 1
            elif self.state == "pre":
                if b == 0xFF:
                    self.state, self.hdr = "hdr", []
                elif b == 0x55:
                    self.garbage += 1
                else:
                    self.garbage += 2
                    self.state = "idle"
            elif self.state == "hdr":
                self.hdr.append(b)
                if len(self.hdr) == 6:
                    h = bytes(self.hdr)
                    if mstp_header_crc(h[:5]) != h[5]:
                        out.append(("header_crc",))
                        self.state = "idle"
                        queue[:0] = list(h)
                        continue
                    t, length = h[0], (h[3] << 8) | h[4]
                    self.ftype, self.dest, self.src = t, h[1], h[2]
                    ext = 32 <= t <= 127
                    if length == 0:
                        self.state = "idle"
                        out.append(("data_crc",) if ext else ("frame", t, h[1], h[2], b""))
                        continue
                    limit = (self.max_data + self.max_data // 254 + 4) if ext else \
                        (self.max_data if t >= 128 else min(self.max_data, 501))
                    if length > limit or (ext and length < 5):
                        out.append(("oversize",))
                        self.state = "idle"
                        continue
                    self.need, self.buf, self.state = length + 2, bytearray(), "data"
            else:
                self.buf.append(b)
                if len(self.buf) == self.need:
                    self.state = "idle"
                    out.append(self._finish())
        return out

    def _finish(self):
        t = self.ftype
        if 32 <= t <= 127:
            enc, ce = bytes(self.buf[:-5]), bytes(self.buf[-5:])
            c = cobs_decode(ce)
            if c is None or len(c) != 4 or struct.unpack("<I", c)[0] != crc32k(enc):
                return ("data_crc",)
            d = cobs_decode(enc)
            if d is None or len(d) > self.max_data:
                return ("data_crc",)
            return ("frame", t, self.dest, self.src, d)
        d, crc = bytes(self.buf[:-2]), bytes(self.buf[-2:])
        if struct.pack("<H", mstp_data_crc(d)) != crc:
            return ("data_crc",)
        return ("frame", t, self.dest, self.src, d)


def plan_min_blocks(points, max_gap, cap_regs, cap_bits, forbidden) -> int | None:
    """Exhaustive minimum number of blocks (set partitions) for tiny inputs; None if a point can't be planned."""
    pts = list(points)

    def feasible(group):
        t, u = pts[group[0]][0], pts[group[0]][1]
        if any(pts[i][0] != t or pts[i][1] != u for i in group):
            return False
        cap = cap_bits if t <= 1 else cap_regs
        ivs = sorted((pts[i][2], pts[i][2] + pts[i][3]) for i in group)
        s, e = ivs[0][0], max(b for _, b in ivs)
        if e - s > cap:
            return False
        cur = ivs[0][1]
        for a, b in ivs[1:]:
            if a > cur and a - cur > max_gap:
                return False
            cur = max(cur, b)
        for (ft, fu, fs, fe) in forbidden:
            if ft == t and fu == u and fs < e and fe >= s:
                return False
        return True

    best = [len(pts) + 1]

    def rec(i, groups):
        # every set partition (feasibility is not monotone: a point can bridge a gap, so only
        # complete groups are checked)
        if len(groups) >= best[0]:
            return
        if i == len(pts):
            if all(feasible(g) for g in groups):
                best[0] = len(groups)
            return
        for g in groups:
            g.append(i)
            rec(i + 1, groups)
            g.pop()
        groups.append([i])
        rec(i + 1, groups)
        groups.pop()

    rec(0, [])
    return best[0] if best[0] <= len(pts) else None
