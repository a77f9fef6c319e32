"""The outbox package: every name importable from where callers import it, and no import of the runtime."""

from __future__ import annotations

import subprocess
import sys

import gatewayd.recorder
import gatewayd.store
import gatewayd.store.outbox as outbox
from gatewayd.store.outbox import blocks, cursor, events, log


def test_names_are_importable_from_the_old_paths():
    assert gatewayd.store.Outbox is outbox.Outbox is log.Outbox
    assert gatewayd.store.OutboxCursor is outbox.OutboxCursor is cursor.OutboxCursor
    assert gatewayd.store.Entry is outbox.Entry is blocks.Entry
    assert outbox.MIGRATIONS is blocks.MIGRATIONS
    assert outbox.BLOCK_RAW_BYTES == blocks.BLOCK_RAW_BYTES
    assert gatewayd.recorder.encode_event is outbox.encode_event is events.encode_event
    assert gatewayd.recorder.decode_entry is outbox.decode_entry is events.decode_entry
    for name in outbox.__all__:
        assert getattr(outbox, name) is not None, name


def test_the_store_package_does_not_import_the_runtime():
    code = ("import sys, gatewayd.store; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('gatewayd'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(out.stdout.split())
    runtime = ("gatewayd.daemon", "gatewayd.recorder", "gatewayd.config", "gatewayd.plugins", "gatewayd.plugin",
               "gatewayd.api", "gatewayd.points", "gatewayd.backup", "gatewayd.rpc", "gatewayd.runtime")
    assert "gatewayd.store.outbox.events" in loaded
    assert not [m for m in loaded if m.startswith(runtime)], loaded
