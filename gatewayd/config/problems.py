"""What every part of configuration checking shares: a :class:`Problem` at
``file:line:col``, the :class:`ConfigError` carrying all of them, and the context
that collects problems and knows where each key path was written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    """One configuration problem, printed as ``file:line:col: message``."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(Exception):
    """Raised by :func:`load_config` with every :class:`Problem` found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_BARE = r"[A-Za-z0-9_-]+"  # a bare TOML key: printed without quotes; the key scanner builds on it


class _Ctx:
    """Collects problems; knows where each key came from."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # key path -> (file, line, col); tables from includes are merged in
        self.where: dict[tuple[str, ...], tuple[str, int, int]] = {}
        self.file_of_root: str = "<config>"
        self.warnings: list[Problem] = []
        # paths declared explicitly by a [header] or a key line (not only implied by a longer one)
        self.declared: set[tuple[str, ...]] = set()

    def at(self, path: tuple[str, ...]) -> tuple[str, int, int]:
        p = tuple(path)
        if p and p not in self.where:
            # a table only declared through its children ([[a.b]] entries, [a.b.c] headers): its first child
            first = self._first_under().get(p)
            if first is not None:
                return first
        while p:
            if p in self.where:
                return self.where[p]
            p = p[:-1]
        return (self.file_of_root, 1, 1)

    def _first_under(self) -> dict[tuple[str, ...], tuple[str, int, int]]:
        """prefix -> the earliest position of a key under it (built once per state of ``where``)."""
        if getattr(self, "_under_n", -1) != len(self.where):
            idx: dict[tuple[str, ...], tuple[str, int, int]] = {}
            for kp, loc in self.where.items():
                for i in range(1, len(kp)):
                    old = idx.get(kp[:i])
                    if old is None or (loc[1], loc[2]) < (old[1], old[2]):
                        idx[kp[:i]] = loc
            self._under, self._under_n = idx, len(self.where)
        return self._under

    def error(self, path: tuple[str, ...], message: str) -> None:
        f, line, col = self.at(path)
        self.problems.append(Problem(f, line, col, message))


def _fmt_path(path: Iterable[str]) -> str:
    out = []
    for p in path:
        out.append(p if re.fullmatch(_BARE, p) else f'"{p}"')
    return ".".join(out)


class _Invalid(Exception):
    """Raised by a validator; the message is reported at the key's position."""
