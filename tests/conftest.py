"""Shared test setup: make tests/ importable so plugins outside the package
(``tests/ext_plugins``) can be referenced from TOML like third-party ones."""

import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
