"""TOML configuration: tomlkit in, typed and validated objects out.

One file (plus ``include`` globs) describes the whole site::

    include = ["conf.d/*.toml"]

    [gateway]
    id = "plant-7"

    [drivers.sim]
    type = "sim"

    [drivers.sim.devices.ahu-1]
    model = "ahu"

    [drivers.sim.devices.ahu-1.points.supply_temp]
    signal = "supply_temp"
    unit = "°C"
    convert = "°C => °F"

Every problem is collected (not just the first) as a :class:`Problem` carrying
``file:line:col``. Unknown keys are errors, with a "did you mean" hint. Secrets
are never written in the file: ``password = { env = "MQTT_PASSWORD" }`` or
``{ file = "/etc/gatewayd/secret" }``.

Plugins describe their own keys with the small schema language below
(:class:`Schema`, :class:`Key` and the validators), so a driver's settings are
validated with the same messages and positions as the core's.

The package is laid out along those steps:

* :mod:`~gatewayd.config.schema`: the schema language (:class:`Schema`, :class:`Key`,
  the validators, ``parse_duration`` / ``parse_size``);
* :mod:`~gatewayd.config.reading`: reading the files and includes, key positions,
  TOML errors as ``file:line:col`` (:func:`read_config`, :func:`toml_problem`);
* :mod:`~gatewayd.config.model`: the typed :class:`Config`, the core sections'
  schemas and validation (:func:`load_config`, :func:`validate_config`);
* :mod:`~gatewayd.config.secrets`: ``{ env = ... }`` / ``{ file = ... }`` values;
* :mod:`~gatewayd.config.problems`: :class:`Problem` and :class:`ConfigError`;
* :mod:`~gatewayd.config.edit`: edits of the file that keep its comments and layout
  (``discovery.accept``).

Import from ``gatewayd.config`` itself (plugins: from :mod:`gatewayd.plugin`; file
edits: from :mod:`gatewayd.config.edit`); the other submodules are its private layout.
"""

from __future__ import annotations

from .model import (BACKUP_SCHEMA, CONNECTOR_BASE, CONTROL_SCHEMA, DEVICE_BASE, DRIVER_BASE, GATEWAY_SCHEMA,
                    HISTORY_SCHEMA, OUTBOX_SCHEMA, POINT_KINDS, POINT_SCHEMA, TOP_KEYS, WRITE_TUNING, BackupConfig,
                    Config, ConnectorConfig, ControlConfig, DeviceConfig, DriverConfig, GatewayConfig, HistoryConfig,
                    OutboxConfig, PointConfig, config_fingerprint, load_config, validate_config)
from .problems import ConfigError, Problem
from .reading import RawConfig, _scan, key_positions, read_config, toml_problem
from .schema import (REQUIRED, AnyValue, Bool, Duration, Enum, Float, Int, Key, List, Map, Schema, SecretStr, Size,
                     Str, Table, Validator, parse_duration, parse_size)
from .secrets import Secret

__all__ = [
    "Problem",
    "ConfigError",
    "Secret",
    "Key",
    "Schema",
    "Validator",
    "Str",
    "Int",
    "Float",
    "Bool",
    "Duration",
    "Size",
    "Enum",
    "List",
    "Table",
    "Map",
    "AnyValue",
    "SecretStr",
    "Config",
    "GatewayConfig",
    "ControlConfig",
    "HistoryConfig",
    "OutboxConfig",
    "BackupConfig",
    "DriverConfig",
    "DeviceConfig",
    "PointConfig",
    "ConnectorConfig",
    "load_config",
    "parse_duration",
    "parse_size",
    "REQUIRED",
]
