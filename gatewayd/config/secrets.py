"""Secrets are never written in the configuration file: a string key may instead be
``{ env = "MQTT_PASSWORD" }`` or ``{ file = "/etc/gatewayd/secret" }``, resolved at
check time into a :class:`Secret` (a ``str`` whose repr never shows the value)."""

from __future__ import annotations

import os
from typing import Any

from .problems import _fmt_path, _Invalid


class Secret(str):
    """A string resolved from ``{ env = ... }`` / ``{ file = ... }``; never shown in repr/logs."""

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return "Secret('***')"


def _resolve_indirection(value: Any, path: tuple[str, ...]) -> Any:
    """``{ env = "NAME" }`` / ``{ file = "/path" }`` -> a :class:`Secret`; any other value unchanged.

    Called for string-valued keys only (the validator decides); a variable that is
    not set or a file that cannot be read is a problem at ``path``.
    """
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("env", "file"):
        (kind, ref), = value.items()
        if not isinstance(ref, str) or not ref:
            raise _Invalid(f"{_fmt_path(path)}: {{ {kind} = ... }} needs a non-empty string")
        if kind == "env":
            if ref not in os.environ:
                raise _Invalid(f"{_fmt_path(path)}: environment variable {ref!r} is not set")
            return Secret(os.environ[ref])
        try:
            with open(ref, encoding="utf-8") as fh:
                return Secret(fh.read().rstrip("\r\n"))
        except OSError as e:
            raise _Invalid(f"{_fmt_path(path)}: cannot read secret file {ref!r}: {e.strerror}") from None
    return value
