"""Shared settings for the native-core tests.

``GATEWAYD_FUZZ_SCALE`` multiplies every property/fuzz budget (default 1: the whole
directory runs in well under a minute; e.g. 50 for a long soak, also under
``native/sanitize.sh``)."""

import os

SCALE = float(os.environ.get("GATEWAYD_FUZZ_SCALE", "1"))


def budget(n: int) -> int:
    """Examples for a property test whose normal budget is n."""
    return max(1, int(n * SCALE))
