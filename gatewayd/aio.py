"""The one asyncio bridge of the core: asyncio-only libraries (bacpypes3, asyncua) from trio.

Design: ONE dedicated asyncio event loop in ONE daemon thread ("gatewayd-asyncio"),
started on first use by the daemon and closed at shutdown. trio awaits work on
it with :meth:`AsyncioBridge.run`; asyncio-side callbacks hop back into trio
only through the trio token (``run_sync_soon``). Measured before the project
started (../shared/PROTOTYPE-FINDINGS.md): this thread bridge was 1.1-1.6x
faster per call than trio-asyncio, and trio-asyncio changes
``asyncio.new_event_loop()`` for the whole process and relies on asyncio
internals removed in 3.14. Our own figures (``bench/aio.py``, this machine,
2 cores): a trivial coroutine round trip costs ~96 us sequentially (10,400
calls/s; the two thread wake-ups dominate) and reaches ~31,500 calls/s with 50
concurrent callers, against ~90,000/s for the same coroutine inside asyncio.
bacpypes3 (~300 ReadProperty/s) and asyncua (~800 reads/s) spend milliseconds
per call in their own code, so the bridge adds under 3 % to their work.

Rules:

* every asyncio object is created, used and closed on the loop thread — build
  them inside the coroutine/callable you pass to :meth:`run` / :meth:`run_sync`;
* nothing on the loop thread touches trio objects except through
  :meth:`call_soon_in_trio` or a :meth:`channel` sender;
* cancellation works both ways: cancelling the awaiting trio task cancels the
  asyncio task and waits (bounded by ``cancel_grace``) until it has finished;
  an asyncio-side cancellation trio did not ask for raises :class:`AsyncioCancelled`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, Awaitable, Callable

import outcome
import trio

log = logging.getLogger("gatewayd.aio")

__all__ = ["AsyncioBridge", "AsyncioCancelled", "open_asyncio_bridge"]


class AsyncioCancelled(Exception):
    """The asyncio task was cancelled from the asyncio side (not by trio)."""


class _Inbox:
    """trio-side receiving end of :meth:`AsyncioBridge.channel`: drop-oldest when full."""

    def __init__(self, max_buffer: int) -> None:
        self._q: deque = deque()
        self.max = max_buffer
        self.dropped = 0
        self._event = trio.Event()
        self.closed = False

    def _put(self, item: Any) -> None:  # on the trio thread
        if self.closed:
            return
        if len(self._q) >= self.max:
            self._q.popleft()
            self.dropped += 1
        self._q.append(item)
        self._event.set()

    async def receive(self) -> Any:
        while not self._q:
            if self.closed:
                raise trio.EndOfChannel
            await self._event.wait()
            self._event = trio.Event()
        return self._q.popleft()

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class AsyncioBridge:
    """A running asyncio loop in its own thread; use :func:`open_asyncio_bridge`."""

    def __init__(self, cancel_grace: float = 5.0) -> None:
        self.cancel_grace = cancel_grace
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.calls = 0

    # ----- lifecycle
    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _start(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name="gatewayd-asyncio", daemon=True)
        self.thread.start()
        await trio.to_thread.run_sync(ready.wait)

    async def _stop(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            await trio.to_thread.run_sync(self.thread.join, 10.0, abandon_on_cancel=True)
            if self.thread.is_alive():
                log.error("the asyncio thread did not stop within 10s")

    # ----- calls
    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` as a task on the asyncio loop; return its result to trio."""
        loop = self.loop
        assert loop is not None and self.token is not None, "bridge not started"
        self.calls += 1
        done = trio.Event()
        box: dict[str, Any] = {}
        token = self.token

        def start() -> None:  # asyncio thread
            try:
                task = loop.create_task(fn(*args))
            except BaseException as e:  # fn() itself raised (not a coroutine function ...)
                box["outcome"] = outcome.Error(e)
                token.run_sync_soon(done.set)
                return
            box["task"] = task
            task.add_done_callback(lambda t: token.run_sync_soon(done.set))

        def cancel() -> None:  # asyncio thread; runs after start() (FIFO)
            t = box.get("task")
            if t is not None and not t.done():
                box["trio_cancelled"] = True
                t.cancel()

        loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except trio.Cancelled:
            loop.call_soon_threadsafe(cancel)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.cancel_grace):
                    await done.wait()
                if not done.is_set():
                    log.error("asyncio task %s ignored cancellation for %.0fs", getattr(fn, "__name__", fn),
                              self.cancel_grace)
            raise
        if "outcome" in box:
            return box["outcome"].unwrap()
        task = box["task"]
        if task.cancelled():
            raise AsyncioCancelled(f"{getattr(fn, '__name__', fn)} was cancelled on the asyncio side")
        exc = task.exception()
        if exc is not None:
            raise exc
        return task.result()

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a plain callable on the loop thread (e.g. a constructor that needs the running loop)."""
        async def wrapper():
            return fn(*args)
        return await self.run(wrapper)

    def call_soon_in_trio(self, fn: Callable[..., Any], *args: Any) -> None:
        """From the asyncio thread: schedule ``fn(*args)`` on the trio thread."""
        self.token.run_sync_soon(fn, *args)

    @asynccontextmanager
    async def channel(self, max_buffer: int = 1000):
        """``(send, inbox)``: ``send(item)`` is callable from the asyncio thread, non-blocking;
        ``inbox`` is received in trio. When full, the oldest item is dropped (``inbox.dropped``)."""
        inbox = _Inbox(max_buffer)
        token = self.token

        def send(item: Any) -> None:
            try:
                token.run_sync_soon(inbox._put, item)
            except trio.RunFinishedError:
                pass

        try:
            yield send, inbox
        finally:
            inbox.closed = True
            inbox._event.set()


@asynccontextmanager
async def open_asyncio_bridge(cancel_grace: float = 5.0):
    """Start the asyncio thread; on exit cancel pending asyncio tasks, close the loop, join the thread."""
    bridge = AsyncioBridge(cancel_grace)
    await bridge._start()
    try:
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            await bridge._stop()
