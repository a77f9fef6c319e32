"""Unit conversions for ``convert = "°C => °F"``.

Conversions are affine (``y = a*x + b``) between units of one dimension. The
documented set (aliases in brackets):

================  =====================================================================
temperature       °C [degC, C], °F [degF, F], K, °R
pressure          Pa, kPa, MPa, hPa, mbar, bar, psi, inH2O, inHg, mmHg, mmH2O, inWC
flow (volume)     m³/s [m3/s], m³/h [m3/h], L/s [l/s], L/min, L/h, cfm [ft³/min], gpm
speed             m/s, km/h, ft/min [fpm], mph
power             W, kW, MW, hp, BTU/h [Btu/h, BTUh], ton [tonref], kBTU/h
energy            J, kJ, MJ, GJ, Wh, kWh, MWh, BTU, kBTU, MBTU, therm
volume            m³ [m3], L [l], gal, ft³ [ft3]
length            m, cm, mm, km, in, ft
mass              kg, g, lb
electric          V, kV, mV; A, mA, kA; VA, kVA; var, kvar
frequency         Hz, kHz, rpm
time              s, min, h, ms
ratio             %, ratio [fraction], ppm
================  =====================================================================

Unknown units or a mix of dimensions are errors at configuration time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Conversion", "parse_convert", "UNITS"]

# unit -> (dimension, factor to base, offset to base): base = x*factor + offset
_U: dict[str, tuple[str, float, float]] = {}


def _add(dim: str, names: str, factor: float, offset: float = 0.0) -> None:
    for n in names.split("|"):
        _U[n] = (dim, factor, offset)


_add("temperature", "K", 1.0)
_add("temperature", "°C|degC|C|℃", 1.0, 273.15)
_add("temperature", "°F|degF|F|℉", 5 / 9, 273.15 - 32 * 5 / 9)
_add("temperature", "°R|degR", 5 / 9)
_add("pressure", "Pa", 1.0)
_add("pressure", "hPa|mbar", 100.0)
_add("pressure", "kPa", 1000.0)
_add("pressure", "MPa", 1e6)
_add("pressure", "bar", 1e5)
_add("pressure", "psi", 6894.757293168)
_add("pressure", "inH2O|inWC|in_wc", 249.08891)
_add("pressure", "mmH2O", 9.80665)
_add("pressure", "inHg", 3386.389)
_add("pressure", "mmHg", 133.322387415)
_add("flow", "m³/s|m3/s", 1.0)
_add("flow", "m³/h|m3/h", 1 / 3600)
_add("flow", "L/s|l/s", 1e-3)
_add("flow", "L/min|l/min", 1e-3 / 60)
_add("flow", "L/h|l/h", 1e-3 / 3600)
_add("flow", "cfm|ft³/min|ft3/min", 0.3048**3 / 60)
_add("flow", "gpm", 3.785411784e-3 / 60)
_add("speed", "m/s", 1.0)
_add("speed", "km/h", 1 / 3.6)
_add("speed", "ft/min|fpm", 0.3048 / 60)
_add("speed", "mph", 0.44704)
_add("power", "W", 1.0)
_add("power", "kW", 1e3)
_add("power", "MW", 1e6)
_add("power", "hp", 745.69987158227)
_add("power", "BTU/h|Btu/h|BTUh", 0.29307107017)
_add("power", "kBTU/h|kBtu/h", 293.07107017)
_add("power", "ton|tonref", 3516.8528421)
_add("energy", "J", 1.0)
_add("energy", "kJ", 1e3)
_add("energy", "MJ", 1e6)
_add("energy", "GJ", 1e9)
_add("energy", "Wh", 3600.0)
_add("energy", "kWh", 3.6e6)
_add("energy", "MWh", 3.6e9)
_add("energy", "BTU|Btu", 1055.05585262)
_add("energy", "kBTU|kBtu", 1055055.85262)
_add("energy", "MBTU|MMBtu", 1055055852.62)
_add("energy", "therm", 105505585.262)
_add("volume", "m³|m3", 1.0)
_add("volume", "L|l", 1e-3)
_add("volume", "gal", 3.785411784e-3)
_add("volume", "ft³|ft3", 0.3048**3)
_add("length", "m", 1.0)
_add("length", "cm", 0.01)
_add("length", "mm", 0.001)
_add("length", "km", 1000.0)
_add("length", "in", 0.0254)
_add("length", "ft", 0.3048)
_add("mass", "kg", 1.0)
_add("mass", "g", 1e-3)
_add("mass", "lb", 0.45359237)
_add("voltage", "V", 1.0)
_add("voltage", "kV", 1e3)
_add("voltage", "mV", 1e-3)
_add("current", "A", 1.0)
_add("current", "mA", 1e-3)
_add("current", "kA", 1e3)
_add("apparent_power", "VA", 1.0)
_add("apparent_power", "kVA", 1e3)
_add("reactive_power", "var|VAr", 1.0)
_add("reactive_power", "kvar|kVAr", 1e3)
_add("frequency", "Hz", 1.0)
_add("frequency", "kHz", 1e3)
_add("frequency", "rpm", 1 / 60)
_add("time", "s", 1.0)
_add("time", "ms", 1e-3)
_add("time", "min", 60.0)
_add("time", "h", 3600.0)
_add("ratio", "ratio|fraction", 1.0)
_add("ratio", "%", 0.01)
_add("ratio", "ppm", 1e-6)

UNITS = dict(_U)

_ARROW = re.compile(r"\s*(?:=>|->|→)\s*")


@dataclass(frozen=True)
class Conversion:
    """``y = a*x + b`` from ``src`` to ``dst``; :meth:`back` inverts it (for writes)."""

    src: str
    dst: str
    a: float
    b: float

    def __call__(self, x: float) -> float:
        return x * self.a + self.b

    def back(self, y: float) -> float:
        return (y - self.b) / self.a


def parse_convert(spec: str) -> Conversion:
    """Parse ``"°C => °F"``; raises ``ValueError`` naming the unknown unit or dimension clash."""
    parts = _ARROW.split(spec.strip())
    if len(parts) != 2 or not all(parts):
        raise ValueError(f'convert {spec!r} must look like "°C => °F"')
    src, dst = parts
    for u in (src, dst):
        if u not in _U:
            raise ValueError(f"unknown unit {u!r} in convert {spec!r} (see the unit table in the README)")
    ds, fs, os_ = _U[src]
    dd, fd, od = _U[dst]
    if ds != dd:
        raise ValueError(f"cannot convert {ds} ({src}) to {dd} ({dst})")
    # base = x*fs + os ; y = (base - od)/fd
    # round away float noise of the factor chain (1/(5/9) -> 1.8) so 100 °C shows as 212 °F
    a = float(f"{fs / fd:.12g}")
    b = float(f"{(os_ - od) / fd:.12g}")
    return Conversion(src, dst, a, b)
