"""Device profiles: register maps in ``profiles/modbus/*.toml`` (JSON accepted).

A profile file::

    [profile]
    name = "schneider-pm5300"          # what ``profile = "..."`` in a device table refers to
    vendor = "Schneider Electric"
    models = ["PM5310", "PM5320", "PM5330", "PM5340"]
    source = "the public manual the map was taken from"

    [points.voltage_an]                # ordinary gatewayd point tables
    table = "holding"
    address = 3027                     # 0-based (manual register 3028)
    type = "float32"
    unit = "V"

The directory is ``$GATEWAYD_PROFILES/modbus`` when the variable is set, else
``profiles/modbus`` next to the package (an editable install from the repo).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache

import tomlkit

__all__ = ["profiles_dir", "load_profile", "list_profiles", "match_profile", "MATCH_THRESHOLD", "ProfileError"]

_HERE = os.path.dirname(os.path.abspath(__file__))


class ProfileError(ValueError):
    pass


def profiles_dir() -> str:
    env = os.environ.get("GATEWAYD_PROFILES")
    if env:
        return os.path.join(env, "modbus") if os.path.isdir(os.path.join(env, "modbus")) else env
    for base in (os.path.join(_HERE, "..", "..", "profiles"), os.path.join(_HERE, "profiles"),
                 "/usr/share/gatewayd/profiles"):
        d = os.path.normpath(os.path.join(base, "modbus"))
        if os.path.isdir(d):
            return d
    return os.path.normpath(os.path.join(_HERE, "..", "..", "profiles", "modbus"))


def _files(d: str) -> dict[str, str]:
    out = {}
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    for f in names:
        stem, ext = os.path.splitext(f)
        if ext in (".toml", ".json"):
            out.setdefault(stem, os.path.join(d, f))
    return out


@lru_cache(maxsize=64)
def _load_file(path: str, mtime: float) -> dict:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text) if path.endswith(".json") else tomlkit.parse(text).unwrap()
    except (ValueError, tomlkit.exceptions.ParseError) as e:
        raise ProfileError(f"profile {os.path.basename(path)}: {e}") from None
    meta = data.get("profile")
    points = data.get("points")
    if not isinstance(meta, dict) or not isinstance(points, dict) or not points:
        raise ProfileError(f"profile {os.path.basename(path)} needs a [profile] table and [points.*] tables")
    for name, p in points.items():
        if not isinstance(p, dict) or "address" not in p:
            raise ProfileError(f"profile {os.path.basename(path)}: point {name!r} needs an address")
    return data


def load_profile(name: str) -> dict:
    """The parsed profile ``name`` (file stem or ``[profile] name``); raises ProfileError."""
    d = profiles_dir()
    files = _files(d)
    path = files.get(name)
    if path is None:
        for stem, p in files.items():
            try:
                if _load_file(p, os.path.getmtime(p))["profile"].get("name") == name:
                    path = p
                    break
            except ProfileError:
                continue
    if path is None:
        known = ", ".join(sorted(files)) or "none"
        raise ProfileError(f"unknown modbus profile {name!r} (in {d}: {known})")
    return _load_file(path, os.path.getmtime(path))


def list_profiles() -> list[dict]:
    out = []
    for stem, path in _files(profiles_dir()).items():
        meta = _load_file(path, os.path.getmtime(path))["profile"]
        out.append({"name": meta.get("name", stem), "file": path, "vendor": meta.get("vendor"),
                    "models": list(meta.get("models", [])), "points": len(_load_file(path, os.path.getmtime(path))["points"])})
    return out


def _norm(s: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "", (s or "").lower())


MATCH_THRESHOLD = 0.5
"""Below this score no profile is proposed: a vendor match alone (0.4) or a generic profile (0.2)
says nothing about the register map, and proposing it would give the device wrong points."""


def match_profile(vendor: str | None, model: str | None, *,
                  threshold: float = MATCH_THRESHOLD) -> tuple[str | None, float]:
    """The best profile for a device's identification strings, scored 0..1.

    Vendor: 0.4 when the profile's vendor (or an alias) is contained in the device's
    vendor string (or vice versa). Model: 0.6 for an exact model match, 0.45 when one
    contains the other (``PM5330`` vs ``PowerLogic PM5330``), 0.3 for a shared series
    prefix of at least 4 characters (``PM53``), 0 otherwise. A profile that names no
    models (a generic one) scores at most 0.2 on the model. Returns (name, score)
    of the best; the name is None when no profile reaches ``threshold``
    (:data:`MATCH_THRESHOLD`, 0.5: at least a vendor match plus a model series match,
    or an exact model), with the best score still given for the operator's information.
    """
    v, m = _norm(vendor), _norm(model)
    best, best_score = None, 0.0
    for p in list_profiles():
        meta = _load_file(p["file"], os.path.getmtime(p["file"]))["profile"]
        names = [meta.get("vendor")] + list(meta.get("vendor_aliases", []))
        score = 0.0
        for pv in map(_norm, names):
            if pv and v and (pv in v or v in pv):
                score = 0.4
                break
        models = [_norm(x) for x in meta.get("models", [])]
        ms = 0.0
        if not models:
            ms = 0.2 if meta.get("generic") else 0.0
        for pm in models:
            if not pm or not m:
                continue
            if pm == m:
                ms = max(ms, 0.6)
            elif pm in m or m in pm:
                ms = max(ms, 0.45)
            elif len(pm) >= 4 and pm[:4] == m[:4]:
                ms = max(ms, 0.3)
        score = round(min(1.0, score + ms), 3)
        if score > best_score:
            best, best_score = p["name"], score
    if best_score < threshold:
        return None, best_score
    return best, best_score
