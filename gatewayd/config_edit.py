"""Edits of the TOML configuration that keep comments and layout: now
:mod:`gatewayd.config.edit`; this module keeps the old import path working."""

from .config.edit import accept_message, add_device, atomic_write, device_text, insertion_line

__all__ = ["add_device", "atomic_write", "device_text", "insertion_line", "accept_message"]
