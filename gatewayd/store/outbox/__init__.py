"""``outbox.db``: the durable, append-only log every northbound connector reads.

The recorder appends entries in batched transactions; each connector instance
owns a named, persisted cursor.  A connector reads a batch from its cursor
(non-destructive), sends it upstream, and only after the upstream acknowledged
it calls :meth:`OutboxCursor.ack`: acking seq N acknowledges everything <= N.
After a reconnect or a restart it simply reads again from its last ack, so
delivery is at-least-once and nothing acknowledged upstream is ever re-sent
from a later position.

Storage.  An entry is ``(seq, ts, kind, key, payload)``.  Sequence numbers are
assigned here, contiguous and never reused (the head lives in a one-row
``meta`` table).  Entries are stored in **blocks**: one row per up to
``block_entries`` consecutive entries of one append (``first``/``last`` seq,
first and newest ts, accounted bytes, data).  The data is column-wise (ts
deltas in ms, interned kind and key ids, payload lengths, then the payloads)
and zlib-compressed.  Why blocks: a row per entry measured ~31 bytes on disk
for an 11-byte payload, i.e. ~75 bytes written per value once WAL and
checkpoint had each written it (over the 60-byte budget); a block brings a
recorder-style value (``[21.53,"ok"]``) to ~6 bytes on disk and ~19 bytes
written per value.  Blocks are immutable, so decoded blocks are cached for
readers.  Blocks are deleted only as a prefix (caps and compaction), so the
live entries are exactly ``tail..head`` and counts are arithmetic, never
``COUNT(*)``.

Caps and the drop policy.  On disk, ``max_bytes`` bounds the files: a
quarter of it (at least 32 KiB) is the WAL's share, kept by a smaller
auto-checkpoint interval and a TRUNCATE checkpoint after any commit that leaves
the -wal file larger; the rest bounds the database pages in use (page_count -
freelist_count), checked *before* each append with room for the new blocks, so
they reuse the freed pages and the file stays under it.  Measured
(``bench/stores.py``): a 256 KiB cap that is binding (a connector that never
acks) keeps the files at ~233 KiB; dropping and the frequent checkpoints cost
~169 bytes written per value instead of ~96 in 100-entry batches.  A memory
outbox counts the accounted size instead (compressed block bytes +
:data:`BLOCK_OVERHEAD` per block, a running total in ``meta``, also shown as
``bytes`` in :meth:`Outbox.status` next to ``disk_bytes``).  ``max_age``
bounds the age of the oldest entry (entry ts vs ``clock()``).  They are
enforced in the same transaction as each append and by
:meth:`Outbox.enforce_caps` (call it periodically so old entries age out when
nothing is appended).  The policy is **drop oldest**, by whole
blocks: the oldest blocks are deleted while the size is over ``max_bytes`` or
the block's newest entry is older than ``max_age`` (so no entry younger than
``max_age`` is dropped for age; an old entry behind a younger block waits for
that block).  Every cursor that had not acked a dropped entry has its
``dropped`` counter raised by the number it missed and its position moved past
them.  The first drop of an episode logs ONE warning on the logger
``gatewayd.outbox``; the episode ends (one info line with the count) at the
first cap check that drops nothing while the size is back under 90 % of
``max_bytes``.

Compaction: blocks acked by every cursor are deleted in bounded chunks (in the
ack transaction and by :meth:`Outbox.compact`).  With no cursor at all,
entries are kept (bounded by the caps) so a connector configured later can
start from ``"oldest"``.

Staging (latency without flash wear).  :meth:`Outbox.stage` gives entries their
seqs in memory and makes them visible to cursors at once (``read_after``,
``wait_for_data``); :meth:`Outbox.commit_staged` writes everything staged in
one transaction.  The recorder stages every batch of events as it arrives and
commits once per flush interval, so a connector sends a value within
milliseconds while the flash sees one commit per second.  A staged entry is
not durable: kill -9 before its commit loses it from the outbox (a connector
may already have sent it: at-least-once is kept, nothing committed is lost).
An ack beyond the committed head is persisted up to it at once and the rest
when the entries are committed.  :meth:`append` is stage + commit.  Seqs are
never reused: ``meta.reserved`` (persisted at open and with every staged
commit) bounds the seqs staged entries can take, and opening a file whose last
stop was unclean starts after it (cursors that had acknowledged everything
committed move past the gap).  Counters (a cursor's ``delivered`` and
``dropped``, ``ack``'s result) count stored entries, never seq distance, so a
gap is counted nowhere: for every cursor ``delivered + dropped + backlog``
equals the entries appended since it was created.

Durability: WAL + synchronous=FULL; an ``append`` or ``ack`` that returned
survives kill -9 and power loss.  ``memory=True`` keeps the whole outbox in
RAM instead: nothing is written to flash and **everything (entries, cursor
positions, counters) is lost on restart** — for boxes that must not write
flash, accepting loss of undelivered data on every restart or power cut.

Flash wear (measured by ``bench/stores.py`` on ext4, write_bytes from
/proc/self/io, WAL + checkpoint included): 1000-entry appends write ~19 bytes
per value (~6 on disk); draining (read + ack every 500, compaction included)
writes ~16 more.  Every commit costs ~6-7 KiB whatever its size (the block's
pages, the meta row, b-tree pages, each written to the WAL and again at
checkpoint), so 100-entry appends write ~96 bytes/value and 10-entry appends
~680: the recorder should append in batches of hundreds (seconds of data), not
per event.  1 KiB pages keep that per-commit cost small.  Acks write the cursor
row and delete fully acked blocks; freed pages are reused, so the file does not
grow while connectors keep up.

Threading: appends, acks and cap enforcement run on the store's writer thread;
``read``/``backlog``/``status`` are small inline reads of a WAL snapshot.  One
process owns an outbox file; ``wait_for_data`` only sees appends made through
this object.

Layout: :mod:`.log` is :class:`Outbox` (append, stage/commit, caps,
compaction, status); :mod:`.cursor` is :class:`OutboxCursor` and the cursor
side of the outbox (create/remove, reads, counters, wake-ups); :mod:`.blocks`
is the on-disk format (schema, block encoding); :mod:`.events` is the entry
format of bus events (:func:`encode_event`, :func:`decode_entry`).  Every name
is importable from ``gatewayd.store.outbox``.
"""

from .blocks import (BLOCK_OVERHEAD, BLOCK_RAW_BYTES, CACHE_BLOCKS, COMPRESS_LEVEL, MIGRATIONS, PAGE_SIZE, Entry)
from .cursor import OutboxCursor
from .events import decode_entry, encode_event
from .log import ENTRY_MEMORY, RESERVE_AHEAD, WAL_MIN_BUDGET, Outbox

__all__ = [
    "BLOCK_OVERHEAD",
    "BLOCK_RAW_BYTES",
    "CACHE_BLOCKS",
    "COMPRESS_LEVEL",
    "ENTRY_MEMORY",
    "MIGRATIONS",
    "PAGE_SIZE",
    "RESERVE_AHEAD",
    "WAL_MIN_BUDGET",
    "Entry",
    "Outbox",
    "OutboxCursor",
    "decode_entry",
    "encode_event",
]
