"""``bacnet``: BACnet/IP driver on bacpypes3, hosted on the core's asyncio bridge.

One bacpypes3 stack per configured network (``ip``, ``ipv6`` — Annex U, wired
by :mod:`.ipv6` from bacpypes3's own pieces — or ``foreign``). Reading packs ReadPropertyMultiple to the device's max APDU and ours,
shrinks batches on "segmentation not supported" and uses ReadProperty after
"unrecognized service" (both remembered in state.db);
SubscribeCOV / SubscribeCOVProperty with renewal at 0.75 of the lifetime,
polling while refused or silent; writes at the requested priority with NULL to
relinquish; a Who-Is monitor (DeviceDown after two missed cycles, object-list
checks); user-initiated discovery; device management over RPC. The protocol
work lives in :mod:`.stack` (asyncio thread), :mod:`.reading` (batch plans) and
:mod:`.discovery`; the trio side is :class:`.driver.BacnetDriver`, made of
:mod:`.network`, :mod:`.polling`, :mod:`.cov`, :mod:`.writes`, :mod:`.monitor`,
:mod:`.timesync` and :mod:`.learned`, configured by :mod:`.config`. This module
registers the driver and its RPC methods. See README.md for settings.
"""

from __future__ import annotations

from gatewayd.plugin import hookimpl

# re-exported: the names this package offered before it was split into modules
from .config import (DEFAULT_PORT, DRIVER_DEFAULTS, MODES, NETWORK_SCHEMA, PLANNED_MODES,  # noqa: F401
                     norm_objid)
from .device import _Dev, flags_of  # noqa: F401
from .driver import BacnetDriver
from .network import _interface_address  # noqa: F401
from .reading import Batch, ObjectRead, kind_of, plan_batches  # noqa: F401 (kind_of: public helper)
from .stack import BacnetError, Stack  # noqa: F401
from .writes import write_error_kind  # noqa: F401

EXTRA = "bacnet"


@hookimpl
def gatewayd_register(registry):
    """Register the ``bacnet`` driver kind."""
    registry.add_driver("bacnet", BacnetDriver)


@hookimpl
def gatewayd_rpc_methods(registry, gateway):
    """Register the BACnet device-management RPC methods (see :mod:`.rpc`)."""
    from .rpc import register

    register(registry, gateway)
