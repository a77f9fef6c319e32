"""The compiled module: only ``ffi`` and ``lib``.

``GATEWAYD_NATIVE_SO`` (used by ``native/sanitize.sh``) loads an alternative
build of the same module, e.g. one compiled with ASan/UBSan.
"""

import os

_alt = os.environ.get("GATEWAYD_NATIVE_SO")
if _alt:
    import importlib.util
    import sys

    _spec = importlib.util.spec_from_file_location("gatewayd.native._native", _alt)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    sys.modules["gatewayd.native._native"] = _mod
    ffi, lib = _mod.ffi, _mod.lib
else:
    try:
        from ._native import ffi, lib
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("gatewayd's native extension is not built (gatewayd.native._native): reinstall with "
                          "`pip install -e .` or `make install` (needs gcc and the Python headers)") from e

__all__ = ["ffi", "lib"]
