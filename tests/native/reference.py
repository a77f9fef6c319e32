"""Pure-Python reference implementations, written from the specifications (BACnet clause 9 and
Annex G, the Modbus over serial line spec) and the rules stated in native/*.c, independently of
the C code: bitwise CRCs, byte-at-a-time state machines, exhaustive planning. Slow on purpose."""

from __future__ import annotations

import struct
from collections import deque

# ---------------------------------------------------------------- CRCs (bit by bit, as the standards print them)


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def header_crc_step(data: int, crc: int) -> int:
    """Annex G.1 CalcHeaderCRC: one octet into the running header CRC."""
    c = crc ^ data
    c = c ^ (c << 1) ^ (c << 2) ^ (c << 3) ^ (c << 4) ^ (c << 5) ^ (c << 6) ^ (c << 7)
    return ((c & 0xFE) ^ ((c >> 8) & 1)) & 0xFF


def mstp_header_crc(data: bytes) -> int:
    crc = 0xFF
    for b in data:
        crc = header_crc_step(b, crc)
    return (~crc) & 0xFF


def data_crc_step(data: int, crc: int) -> int:
    """Annex G.2 CalcDataCRC: one octet into the running data CRC."""
    c = (crc & 0xFF) ^ data
    return ((crc >> 8) ^ (c << 8) ^ (c << 3) ^ (c << 12) ^ (c >> 4) ^ (c & 0x0F) ^ ((c & 0x0F) << 7)) & 0xFFFF


def mstp_data_crc(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc = data_crc_step(b, crc)
    return (~crc) & 0xFFFF


def crc32k_step(data: int, crc: int) -> int:
    """Annex G.3 CalcCRC32K: one octet into the running CRC-32K."""
    for _ in range(8):
        crc = (crc >> 1) ^ 0xEB31D82E if (data ^ crc) & 1 else crc >> 1
        data >>= 1
    return crc


def crc32k(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = crc32k_step(b, crc)
    return (~crc) & 0xFFFFFFFF


# ---------------------------------------------------------------- COBS and MS/TP frames

def cobs_encode(data: bytes, mask: int = 0x55) -> bytes:
    """Split at zeros into runs; runs longer than 254 become full 0xFF blocks; the data ends with a
    phantom zero, except that a data end right after a full block adds nothing."""
    out = bytearray()
    runs = data.split(b"\0")
    for k, run in enumerate(runs):
        last = k == len(runs) - 1
        while len(run) >= 254:
            out.append(255)
            out += run[:254]
            run = run[254:]
            if not run and last:
                return bytes(x ^ mask for x in out)
        out.append(len(run) + 1)
        out += run
    return bytes(x ^ mask for x in out)


def cobs_decode(enc: bytes, mask: int = 0x55) -> bytes | None:
    data = bytes(x ^ mask for x in enc)
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0 or i + code > len(data) or 0 in data[i + 1: i + code]:
            return None
        out += data[i + 1: i + code]
        i += code
        if code != 255 and i < len(data):
            out.append(0)
    return bytes(out)


def is_ext(t: int) -> bool:
    return 32 <= t <= 127


def encode_frame(ftype: int, dest: int, src: int, data: bytes = b"") -> bytes:
    if is_ext(ftype):
        enc = cobs_encode(data)
        body = enc + cobs_encode(struct.pack("<I", crc32k(enc)))
        length = len(body) - 2
    else:
        body = data + (struct.pack("<H", mstp_data_crc(data)) if data else b"")
        length = len(data)
    hdr = bytes([ftype, dest, src, length >> 8, length & 0xFF])
    return b"\x55\xff" + hdr + bytes([mstp_header_crc(hdr)]) + body


class MstpReceiver:
    """One octet at a time. Events: ("frame", type, dest, src, data) or (kind, type, dest, src) with the
    header fields None when the header was not good."""

    MAX_LENGTH = 2043

    def __init__(self, max_data: int = 1497):
        self.max_data = min(max_data, 2032)
        self.state = "idle"
        self.counts = dict.fromkeys(("frames", "header_crc", "data_crc", "oversize", "truncated", "malformed",
                                     "garbage_bytes"), 0)
        self.hdr_known = False

    def _err(self, kind):
        self.counts[kind] += 1
        if self.hdr_known:
            return (kind, self.ftype, self.dest, self.src)
        return (kind, None, None, None)

    def feed(self, data: bytes) -> list:
        out = []
        queue = deque(data)
        while queue:
            b = queue.popleft()
            st = self.state
            if st == "idle":
                if b == 0x55:
                    self.state = "pre"
                else:
                    self.counts["garbage_bytes"] += 1
            elif st == "pre":
                if b == 0xFF:
                    self.state, self.hdr, self.hdr_known = "hdr", [], False
                elif b == 0x55:
                    self.counts["garbage_bytes"] += 1
                else:
                    self.counts["garbage_bytes"] += 2
                    self.state = "idle"
            elif st == "hdr":
                self.hdr.append(b)
                if len(self.hdr) == 6:
                    out += self._header(queue)
            else:  # data or skip
                if self.ext and b == 0x55:          # COBS data never holds 0x55: a new frame starts here
                    self.state = "pre"
                    if st == "data":
                        out.append(self._err("truncated"))
                    continue
                self.buf.append(b)
                if len(self.buf) == self.need:
                    self.state = "idle"
                    if st == "data":
                        out.append(self._finish())
        return out

    def silence(self):
        st, self.state = self.state, "idle"
        if st in ("hdr", "data"):
            return self._err("truncated")
        if st == "pre":
            self.counts["garbage_bytes"] += 1
        return None

    def _header(self, queue):
        h = bytes(self.hdr)
        self.state = "idle"
        if mstp_header_crc(h[:5]) != h[5]:
            queue.extendleft(reversed(h))  # rescan: a real preamble may start inside
            return [self._err("header_crc")]
        t, length = h[0], (h[3] << 8) | h[4]
        self.ftype, self.dest, self.src, self.hdr_known = t, h[1], h[2], True
        self.ext = is_ext(t)
        if self.ext:
            if length < 5:
                if length:
                    self._skip(length + 2)
                return [self._err("malformed")]
            if length > min(self.max_data + self.max_data // 254 + 4, self.MAX_LENGTH):
                if length <= self.MAX_LENGTH:
                    self._skip(length + 2)
                return [self._err("oversize")]
        else:
            if length == 0:
                self.counts["frames"] += 1
                return [("frame", t, h[1], h[2], b"")]
            if length > min(self.max_data, 501):
                if length <= 501:
                    self._skip(length + 2)
                return [self._err("oversize")]
        self.need, self.buf, self.state = length + 2, bytearray(), "data"
        return []

    def _skip(self, n):
        self.need, self.buf, self.state = n, bytearray(), "skip"

    def _finish(self):
        if self.ext:
            enc, ce = bytes(self.buf[:-5]), bytes(self.buf[-5:])
            c = cobs_decode(ce)
            if c is None or len(c) != 4 or struct.unpack("<I", c)[0] != crc32k(enc):
                return self._err("data_crc")
            d = cobs_decode(enc)
            if d is None:
                return self._err("malformed")
            if len(d) > self.max_data:
                return self._err("oversize")
        else:
            d, crc = bytes(self.buf[:-2]), bytes(self.buf[-2:])
            if struct.pack("<H", mstp_data_crc(d)) != crc:
                return self._err("data_crc")
        self.counts["frames"] += 1
        return ("frame", self.ftype, self.dest, self.src, d)


# ---------------------------------------------------------------- Modbus RTU

FIXED = {5: 8, 6: 8, 7: 5, 8: 8, 11: 8, 15: 8, 16: 8, 22: 10}
COUNTED = {1, 2, 3, 4, 12, 17, 20, 21, 23}


def rtu_frame_length(s: bytes, p: int, unit: int, function: int, byte_count=None, fixed_length=None):
    """Length of the response candidate at p, decided from the whole stream s; None if none there."""
    if p + 1 >= len(s) or s[p] != unit:
        return None
    f = s[p + 1]
    if f == function | 0x80:
        n = 5
    elif f != function:
        return None
    elif fixed_length is not None:
        n = fixed_length
    elif byte_count is not None or function in COUNTED:
        if p + 2 >= len(s) or (byte_count is not None and s[p + 2] != byte_count):
            return None
        n = 5 + s[p + 2]
    elif function in FIXED:
        n = FIXED[function]
    elif function == 24:
        if p + 3 >= len(s):
            return None
        n = 6 + (s[p + 2] << 8 | s[p + 3])
    elif function == 43 and p + 2 < len(s) and s[p + 2] == 0x0E:
        if p + 7 >= len(s):
            return None
        n = 8
        for _ in range(s[p + 7]):
            if p + n + 1 >= len(s) or n > 256:
                return None
            n += 2 + s[p + n + 1]
        n += 2
    else:
        for n in range(4, min(256, len(s) - p) + 1):
            if crc16_modbus(s[p: p + n - 2]) == s[p + n - 2] | s[p + n - 1] << 8:
                return n
        return None
    if not 4 <= n <= 256 or p + n > len(s):
        return None
    return n if crc16_modbus(s[p: p + n - 2]) == s[p + n - 2] | s[p + n - 1] << 8 else None


def rtu_find(s: bytes, unit: int, function: int, byte_count=None, fixed_length=None):
    """The response an octet-by-octet scanner reports first: the valid candidate that completes
    first (smallest end, then smallest start). Returns (start, frame) or None."""
    best = None
    for p in range(len(s)):
        n = rtu_frame_length(s, p, unit, function, byte_count, fixed_length)
        if n is not None and (best is None or p + n < best[0] + best[1]):
            best = (p, n)
    return None if best is None else (best[0], s[best[0]: best[0] + best[1]])


# ---------------------------------------------------------------- block planner

def block_ok(pts, group, max_gap, cap_regs, cap_bits, forbidden) -> bool:
    """Can these points share one block? Same table and unit; hull within the cap; no uncovered run
    longer than max_gap between them; no forbidden range touching the hull."""
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
    return not any(ft == t and fu == u and fs < e and fe >= s for ft, fu, fs, fe in forbidden)


def plan_min_blocks(points, max_gap, cap_regs, cap_bits, forbidden) -> int:
    """Exhaustive minimum number of blocks over every set partition (small inputs only).
    Feasibility is not monotone (a point can bridge a gap), so only complete groups are judged."""
    pts = list(points)
    best = [len(pts)]

    def rec(i, groups):
        if len(groups) >= best[0] and i < len(pts):
            return
        if i == len(pts):
            if len(groups) < best[0] or not pts:
                if all(block_ok(pts, g, max_gap, cap_regs, cap_bits, forbidden) for g in groups):
                    best[0] = len(groups)
            return
        for g in groups:
            g.append(i)
            rec(i + 1, groups)
            g.pop()
        groups.append([i])
        rec(i + 1, groups)
        groups.pop()

    if not pts:
        return 0
    # one block per point is always feasible for plannable points
    assert all(block_ok(pts, [i], max_gap, cap_regs, cap_bits, forbidden) for i in range(len(pts)))
    rec(0, [])
    return best[0]
