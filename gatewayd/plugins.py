"""Plugin manager: pluggy + the ``gatewayd.plugins`` entry-point group + dotted paths.

The host decides what loads: only the entry points whose names the TOML uses
(``type = "modbus"`` loads the entry point ``modbus``), plus modules named by
dotted path. First-party plugins go through exactly the same path as third-party
ones. A plugin whose optional dependency is missing fails with one line naming
the extra to install.

Threads: a :class:`PluginRegistry` belongs to the thread that made it (the trio
thread in the daemon). Only that thread imports and registers plugins
(:meth:`PluginRegistry.load_for`, :meth:`~PluginRegistry.load_module`,
:meth:`~PluginRegistry.load_entry_point`); a call from another thread is refused
with an error line, so a reload that parses and validates in a worker thread can
never mutate the shared registry. Lookups (``get``, ``available``) are safe anywhere.
Hooks are always called through pluggy (``pm.hook`` / a subset caller), never by
reaching into a module with ``getattr``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
import threading
from typing import Any

import pluggy

from . import hookspecs

log = logging.getLogger("gatewayd.plugins")
hook_log = logging.getLogger("gatewayd.hooks")

#: Set to 1 to log every hook call (hook name, arguments, which plugin, result) to the
#: logger ``gatewayd.hooks`` at INFO, through pluggy's own tracing.
HOOK_TRACE_ENV = "GATEWAYD_HOOK_TRACE"

ENTRY_POINT_GROUP = "gatewayd.plugins"

__all__ = ["PluginRegistry", "TypeRegistry", "PluginLoadError", "ENTRY_POINT_GROUP", "HOOK_TRACE_ENV"]


class PluginLoadError(Exception):
    """A plugin could not be loaded; the message is one line for the operator."""


class TypeRegistry:
    """What ``gatewayd_register`` hooks receive: a place to add types by name."""

    def __init__(self) -> None:
        self.drivers: dict[str, type] = {}
        self.connectors: dict[str, type] = {}
        self.origin: dict[tuple[str, str], str] = {}
        self._current: str = "?"

    def _add(self, kind: str, table: dict, name: str, cls: type) -> None:
        if not isinstance(name, str) or not name:
            raise PluginLoadError(f"plugin {self._current}: {kind} type name must be a non-empty string")
        if name in table and table[name] is not cls:
            raise PluginLoadError(f"{kind} type {name!r} registered twice: by {self.origin[(kind, name)]} "
                                  f"and by {self._current}")
        table[name] = cls
        self.origin[(kind, name)] = self._current

    def add_driver(self, name: str, cls: type) -> None:
        """Register a :class:`gatewayd.plugin.Driver` subclass as driver type ``name``."""
        if not (isinstance(cls, type) and getattr(cls, "_gatewayd_kind", None) == "driver"):
            raise PluginLoadError(f"plugin {self._current}: driver type {name!r} must subclass gatewayd.plugin.Driver")
        self._add("driver", self.drivers, name, cls)

    def add_connector(self, name: str, cls: type) -> None:
        """Register a :class:`gatewayd.plugin.Connector` subclass as connector type ``name``."""
        if not (isinstance(cls, type) and getattr(cls, "_gatewayd_kind", None) == "connector"):
            raise PluginLoadError(f"plugin {self._current}: connector type {name!r} must subclass gatewayd.plugin.Connector")
        self._add("connector", self.connectors, name, cls)


def _missing_dependency_message(origin: str, module: str, exc: ModuleNotFoundError, extra: str | None) -> str:
    missing = exc.name or str(exc)
    if extra:
        return (f"plugin {origin!r} needs the Python package {missing!r}, which is not installed: "
                f"pip install 'gatewayd[{extra}]'")
    return f"plugin {origin!r} (module {module}) needs the Python package {missing!r}, which is not installed"


def _write_trace(message: str) -> None:
    """pluggy's trace writer: one log record per non-empty line."""
    for line in message.splitlines():
        if line.strip():
            hook_log.info("%s", line.rstrip())


class PluginRegistry:
    """Loads plugins on demand and keeps the registered types."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("gatewayd")
        self.pm.add_hookspecs(hookspecs)
        self.types = TypeRegistry()
        self.loaded: dict[str, Any] = {}  # module name -> module
        self.failed: dict[str, str] = {}
        self.owner_thread = threading.get_ident()
        if os.environ.get(HOOK_TRACE_ENV, "").strip() not in ("", "0"):
            self.pm.trace.root.setwriter(_write_trace)
            self.pm.enable_tracing()
            if hook_log.getEffectiveLevel() > logging.INFO:
                hook_log.setLevel(logging.INFO)

    def _wrong_thread(self, what: str) -> str | None:
        if threading.get_ident() == self.owner_thread:
            return None
        return (f"plugin {what!r} cannot be loaded from this thread: plugins are loaded only on the thread that "
                "owns the plugin registry (the daemon's main thread)")

    def load_for(self, raw: Any, *, entry_points: bool = True) -> dict[tuple[str, str], str]:
        """Load every plugin a :class:`gatewayd.config.RawConfig` names, on this (the owner) thread.

        Returns ``{("module", dotted) | ("entry_point", type name): error line}`` for
        the ones that failed; :func:`gatewayd.config.validate_config` reports them at
        the right keys. Entry points are tried only for types no loaded plugin
        registered (``entry_points=False`` skips them).
        """
        errors: dict[tuple[str, str], str] = {}
        for kind, name in raw.plugins_needed():
            if kind == "module":
                err = self.load_module(name)
            else:
                if not entry_points or self.get("driver", name) is not None or self.get("connector", name) is not None:
                    continue
                err = self.load_entry_point(name)
            if err:
                errors[(kind, name)] = err
        return errors

    # ----- lookups
    def get(self, kind: str, name: str) -> type | None:
        return (self.types.drivers if kind == "driver" else self.types.connectors).get(name)

    def available(self, kind: str) -> list[str]:
        """Registered types plus installed entry points (not yet loaded)."""
        names = set((self.types.drivers if kind == "driver" else self.types.connectors))
        names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        return sorted(names)

    # ----- loading
    def _register_module(self, mod: Any, origin: str) -> str | None:
        if mod.__name__ in self.loaded:
            return None
        wrong = self._wrong_thread(origin)
        if wrong:
            return wrong
        self.types._current = origin
        try:
            self.pm.register(mod, name=mod.__name__)
            self.pm.check_pending()
            # call the hook of this plugin only, through pluggy
            others = [p for p in self.pm.get_plugins() if p is not mod]
            self.pm.subset_hook_caller("gatewayd_register", remove_plugins=others)(registry=self.types)
        except PluginLoadError as e:
            self._safe_unregister(mod)
            return str(e)
        except pluggy.PluginValidationError as e:
            self._safe_unregister(mod)
            return f"plugin {origin!r} is not a valid gatewayd plugin: {e}"
        except Exception as e:  # a broken plugin must not take the daemon down
            self._safe_unregister(mod)
            return f"plugin {origin!r} failed while registering: {type(e).__name__}: {e}"
        self.loaded[mod.__name__] = mod
        return None

    def _safe_unregister(self, mod) -> None:
        try:
            self.pm.unregister(mod)
        except Exception:  # pragma: no cover
            pass

    def load_module(self, dotted: str) -> str | None:
        """Load a plugin by dotted module path; returns an error line or None."""
        if dotted in self.loaded:
            return None
        wrong = self._wrong_thread(dotted)
        if wrong:
            return wrong
        try:
            mod = importlib.import_module(dotted)
        except ModuleNotFoundError as e:
            if e.name == dotted or (e.name and dotted.startswith(e.name + ".")):
                return f"plugin module {dotted!r} not found (is it installed or on PYTHONPATH?)"
            return _missing_dependency_message(dotted, dotted, e, getattr(sys.modules.get(dotted), "EXTRA", None))
        except Exception as e:
            return f"plugin module {dotted!r} failed to import: {type(e).__name__}: {e}"
        return self._register_module(mod, dotted)

    def load_entry_point(self, name: str) -> str | None:
        """Load the entry point ``name`` of group ``gatewayd.plugins``; returns an error line or None."""
        if name in self.failed:
            return self.failed[name]
        wrong = self._wrong_thread(name)
        if wrong:
            return wrong
        eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not eps:
            return None  # caller reports "unknown type" with the list of available ones
        ep = eps[0]
        try:
            mod = ep.load()
        except ModuleNotFoundError as e:
            module = ep.value.split(":")[0]
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                msg = (f"plugin {name!r} is declared (entry point {ep.value}) but its package is missing: "
                       "the installation is incomplete, reinstall gatewayd")
                self.failed[name] = msg
                return msg
            # first-party plugins: the entry-point name is the extra's name
            extra = name if module.startswith("gatewayd_") else None
            msg = _missing_dependency_message(name, ep.value, e, extra)
            self.failed[name] = msg
            return msg
        except Exception as e:
            msg = f"plugin {name!r} ({ep.value}) failed to import: {type(e).__name__}: {e}"
            self.failed[name] = msg
            return msg
        err = self._register_module(mod, name)
        if err:
            self.failed[name] = err
        return err

    @property
    def hook(self):
        """pluggy's hook relay (``registry.hook.gatewayd_rpc_methods(...)``)."""
        return self.pm.hook

    def add_rpc_methods(self, methods: Any, gateway: Any) -> list[str]:
        """Call every loaded plugin's ``gatewayd_rpc_methods`` hook through pluggy, one plugin at a time,
        so one plugin's failure neither stops the others nor the caller. Returns error lines."""
        errors = []
        for impl in self.pm.hook.gatewayd_rpc_methods.get_hookimpls():
            others = [p for p in self.pm.get_plugins() if p is not impl.plugin]
            try:
                self.pm.subset_hook_caller("gatewayd_rpc_methods", remove_plugins=others)(registry=methods,
                                                                                          gateway=gateway)
            except Exception as e:
                log.error("plugin %s failed to add its RPC methods", impl.plugin_name, exc_info=True)
                errors.append(f"plugin {impl.plugin_name}: {type(e).__name__}: {e}")
        return errors
