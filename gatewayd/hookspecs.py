"""The plugin contract: every hook gatewayd calls, with its rules.

Hooks are synchronous (pluggy): they *register* things. The core creates the
instances and runs their async ``run()`` in its own nurseries, so a plugin
never starts a thread, an event loop or a background task of its own.

A plugin is a module (first-party ones are the packages ``gatewayd_<name>``
under ``plugins/``) that defines functions marked with
:data:`gatewayd.plugin.hookimpl`. It is found through the entry-point group
``gatewayd.plugins`` (entry-point name = the type name used in TOML) or through a
dotted module path in the TOML (``plugin = "mypkg.myplugin"`` in a driver or
connector table, or ``plugins = ["mypkg.myplugin"]`` at the top level). Only
plugins that the configuration uses are imported.

The host calls every hook through pluggy (so ``@hookimpl(specname=...)`` and
pluggy's hook options work), one plugin at a time, on the daemon's main thread
(never from the worker threads that read and validate a configuration).
``GATEWAYD_HOOK_TRACE=1`` logs every hook call (logger ``gatewayd.hooks``).
docs/plugins.md documents every hook and parameter.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gatewayd")


@hookspec
def gatewayd_register(registry) -> None:
    """Register driver and connector *types* by name.

    ``registry`` is a :class:`gatewayd.plugins.TypeRegistry`::

        @hookimpl
        def gatewayd_register(registry):
            registry.add_driver("modbus", ModbusDriver)
            registry.add_connector("mqtt", MqttConnector)

    A driver type is a subclass of :class:`gatewayd.plugin.Driver`, a connector
    type a subclass of :class:`gatewayd.plugin.Connector`. Registering a name
    twice is an error (the message names both plugins). Called once, when the
    plugin is loaded; must not do I/O.
    """


@hookspec
def gatewayd_rpc_methods(registry, gateway) -> None:
    """Add JSON-RPC methods of this plugin to the control socket.

    ``registry`` is a :class:`gatewayd.plugin.MethodRegistry` (``registry.add(name,
    handler, role=Role.OPERATOR, mutating=True)``); ``gateway`` is the
    :class:`gatewayd.plugin.GatewayAPI` the handlers use to reach driver
    instances (``gateway.driver("mb1")``), points and stores. Method names are
    namespaced by the plugin (``modbus.read_registers``). Called every time the
    daemon (re)builds its method table; must not do I/O.
    """
