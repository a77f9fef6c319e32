"""Fixtures of the modbus tests (their helpers live in mbtest.py, importable by the tests)."""

from mbtest import mini_slave_factory, rtu_bus, tcp_server_factory  # noqa: F401  (fixtures)
