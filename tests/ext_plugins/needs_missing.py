"""A plugin whose optional dependency is not installed."""

import gatewayd_no_such_dependency  # noqa: F401
