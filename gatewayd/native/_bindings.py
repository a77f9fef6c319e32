"""The compiled module: only ``ffi`` and ``lib``."""

try:
    from ._native import ffi, lib
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("gatewayd's native extension is not built (gatewayd.native._native): reinstall with "
                      "`pip install -e .` or `make install` (needs gcc and the Python headers)") from e

__all__ = ["ffi", "lib"]
