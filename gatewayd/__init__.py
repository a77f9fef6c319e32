"""gatewayd: an edge gateway daemon.

The public faces are this package (version) and :mod:`gatewayd.plugin` (what
plugin authors import). Everything else is internal and may change.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
