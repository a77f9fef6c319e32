"""The one asyncio bridge of the core: asyncio-only libraries (bacpypes3, asyncua) from trio.

Choice. ONE dedicated asyncio event loop in ONE daemon thread
("gatewayd-asyncio"), owned by :func:`open_asyncio_bridge`. trio awaits work on
it with :meth:`AsyncioBridge.run` / :meth:`AsyncioBridge.run_sync`; the loop
thread hands results and callbacks back only through the trio token
(``run_sync_soon``). The alternative, trio-asyncio, runs asyncio inside the
trio loop, but importing it replaces ``asyncio.new_event_loop`` for the
whole process (checked with 0.16) and, per ../shared/PROTOTYPE-FINDINGS.md,
warns on Python 3.13 and relies on asyncio internals removed in 3.14; the
thread keeps asyncio stock and confines it to one thread. Measured with ``bench/aio.py`` on this machine (2 cores
shared with other work, CPython 3.11, trio 0.35, trio-asyncio 0.16, asyncua
2.1; best of 3, two runs; a trivial ``await asyncio.sleep(0)`` coroutine,
round trip from trio):

======================================  ===================  ===================
path                                    sequential           50 concurrent
======================================  ===================  ===================
this bridge                             10,000-10,400 /s     35,500-37,700 /s
trio-asyncio (``aio_as_trio``)          7,200-9,600 /s       7,600-11,300 /s
the coroutine as a task inside asyncio  77,000-94,000 /s     (baseline)
======================================  ===================  ===================

So 1.0-1.45x trio-asyncio for one caller and 3-5x when callers wait
together (they share the thread wake-ups; single runs ranged 0.8-1.5x and
1.9-5.9x under load). A sequential call costs ~100 us, mostly the two thread
wake-ups. On a real library call, an asyncua ``read_value`` against a
local asyncua server: 1,460-1,850 reads/s through the bridge against
2,200-2,500/s with the client in plain asyncio, i.e. +0.14-0.23 ms per
call; against a device on a real network (milliseconds per request) that is
a few per cent, and concurrent requests amortize it.

Rules (what keeps two event loops in two threads correct):

* every asyncio object is created, used and closed on the loop thread: build
  it inside the coroutine / callable handed to :meth:`~AsyncioBridge.run` or
  :meth:`~AsyncioBridge.run_sync`, and close it the same way;
* nothing on the loop thread touches trio objects; it reaches trio only
  through :meth:`~AsyncioBridge.call_soon_in_trio` or a
  :meth:`~AsyncioBridge.channel` sender (both go through the trio token);
* plain values cross the boundary, not library objects a trio task would be
  tempted to use.

Cancellation, both ways:

* trio -> asyncio: cancelling the trio task awaiting :meth:`~AsyncioBridge.run`
  cancels the asyncio task, and ``run`` returns only once the asyncio side has
  finished, bounded by ``cancel_grace`` seconds (then it logs an error and
  trio's ``Cancelled`` propagates; the asyncio task is left to the loop). If the
  asyncio task finished anyway (the cancel came too late, or the coroutine
  chose to return), its result or exception is delivered instead of being
  dropped, and the pending trio cancellation hits the caller's next checkpoint.
* asyncio -> trio: a task cancelled on the asyncio side (not by trio) raises
  :class:`AsyncioCancelled` in trio; calls still pending when the bridge shuts
  down, or made after it, raise :class:`BridgeClosed` (a ``RuntimeError``).

Shutdown (leaving :func:`open_asyncio_bridge`): stop the loop, cancel every
task still pending (several rounds, for tasks spawned by cleanup code) and wait
for them up to ``shutdown_timeout``, ``loop.shutdown_asyncgens()``, shut down
the loop's default executor, close the loop, join the thread (bounded). A task
that ignores cancellation is logged by name and abandoned with the thread,
which is a daemon thread, so it cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import outcome
import trio

log = logging.getLogger("gatewayd.aio")

__all__ = ["AsyncioBridge", "AsyncioCancelled", "AsyncioChannel", "BridgeClosed", "open_asyncio_bridge"]

THREAD_NAME = "gatewayd-asyncio"


class AsyncioCancelled(Exception):
    """The asyncio task was cancelled on the asyncio side, not by trio."""


class BridgeClosed(RuntimeError):
    """The asyncio bridge is shutting down or closed; the call did not (or no longer) run."""


_CANCELLED_BY_TRIO = outcome.Value(None)  # marker outcome: trio re-raises its own Cancelled


def _name(fn: Any) -> str:
    fn = getattr(fn, "func", fn)  # functools.partial
    name = getattr(fn, "__qualname__", None)
    return name.rsplit("<locals>.", 1)[-1] if name else repr(fn)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class _Call:
    """One trio -> asyncio call. ``outcome``, ``task`` and ``trio_cancelled`` are written on the
    loop thread; ``done`` is set on the trio thread (through the token) after ``outcome`` is written."""

    __slots__ = ("fn", "args", "done", "outcome", "task", "trio_cancelled")

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn = fn
        self.args = args
        self.done = trio.Event()
        self.outcome: outcome.Outcome | None = None
        self.task: asyncio.Task | None = None
        self.trio_cancelled = False


class AsyncioChannel:
    """asyncio -> trio delivery with a bounded buffer; made by :meth:`AsyncioBridge.channel`.

    :meth:`send` is called on the loop thread (any thread, in fact): it never blocks, and when
    ``max_buffer`` items are already waiting it drops the OLDEST one and counts it in
    :attr:`dropped` (live data: the newest value matters most). The buffer is bounded on the
    sending side, so a stalled trio loop cannot make it grow, and a burst of sends costs one trio
    wake-up. The trio side reads with :meth:`receive` or ``async for``; after :meth:`close` it
    drains what is left, then ends.
    """

    def __init__(self, token: trio.lowlevel.TrioToken, max_buffer: int) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.max_buffer = max_buffer
        self.dropped = 0
        self.received = 0
        self._token = token
        self._lock = threading.Lock()
        self._items: deque = deque()
        self._wake_pending = False
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()  # receivers waiting (trio thread only)

    # ---- sending side (loop thread)
    def send(self, item: Any) -> bool:
        """Queue ``item`` for trio without blocking; False if the channel is closed (item discarded)."""
        first_drop = wake = False
        with self._lock:
            if self._closed:
                return False
            if len(self._items) >= self.max_buffer:
                self._items.popleft()
                self.dropped += 1
                first_drop = self.dropped == 1
            self._items.append(item)
            if not self._wake_pending:
                self._wake_pending = wake = True
        if wake:
            self._schedule_wake()
        if first_drop:
            log.warning("asyncio channel full (%d items waiting): dropping the oldest, counted in .dropped",
                        self.max_buffer)
        return True

    def close(self) -> None:
        """No more items: the receiver drains the buffer, then gets ``EndOfChannel``. Any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._wake_pending:
                return
            self._wake_pending = True
        self._schedule_wake()

    def _schedule_wake(self) -> None:
        try:
            self._token.run_sync_soon(self._wake)
        except trio.RunFinishedError:  # trio is gone: nobody will receive
            pass

    def _wake(self) -> None:  # trio thread
        with self._lock:
            self._wake_pending = False
        self._lot.unpark_all()

    # ---- receiving side (trio)
    def receive_nowait(self) -> Any:
        """The oldest waiting item; ``trio.WouldBlock`` if none, ``trio.EndOfChannel`` once closed and drained."""
        with self._lock:
            if self._items:
                self.received += 1
                return self._items.popleft()
            if self._closed:
                raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                item = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item

    def __aiter__(self) -> "AsyncioChannel":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self) -> dict:
        with self._lock:
            waiting = len(self._items)
        return {"waiting": waiting, "max_buffer": self.max_buffer, "received": self.received,
                "dropped": self.dropped, "closed": self._closed}


class AsyncioBridge:
    """A running asyncio loop in its own thread; get one with :func:`open_asyncio_bridge`."""

    def __init__(self, cancel_grace: float = 5.0, shutdown_timeout: float = 5.0) -> None:
        self.cancel_grace = cancel_grace
        self.shutdown_timeout = shutdown_timeout
        self.calls = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closing = False  # written on the trio thread before the loop is told to stop
        self._outstanding: set[_Call] = set()  # trio thread only

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The asyncio loop (use it only on the loop thread)."""
        return self._loop

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closing

    @property
    def pending(self) -> int:
        """Calls awaited from trio right now."""
        return len(self._outstanding)

    # ------------------------------------------------------------------ lifecycle
    async def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        started = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._thread_main, args=(started, failed), name=THREAD_NAME,
                                        daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(started.wait)
        if failed:
            raise BridgeClosed("the asyncio loop did not start") from failed[0]

    def _thread_main(self, started: threading.Event, failed: list) -> None:
        try:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        except BaseException as e:  # pragma: no cover - no loop, no bridge
            failed.append(e)
            started.set()
            return
        self._loop = loop
        started.set()
        try:
            loop.run_forever()
        except BaseException:
            log.exception("the asyncio loop stopped with an exception")
        finally:
            try:
                self._shutdown_loop(loop)
            except BaseException:
                log.exception("error while shutting the asyncio loop down")
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                # whatever is still awaited from trio now fails instead of hanging
                try:
                    self._token.run_sync_soon(self._fail_outstanding)
                except trio.RunFinishedError:
                    pass

    def _shutdown_loop(self, loop: asyncio.AbstractEventLoop) -> None:  # loop thread, loop stopped
        deadline = loop.time() + self.shutdown_timeout
        pending: set[asyncio.Task] = set()
        for _ in range(5):  # cleanup code may start new tasks: a few rounds
            pending = {t for t in asyncio.all_tasks(loop) if not t.done()}
            left = deadline - loop.time()
            if not pending or left <= 0:
                break
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.wait(pending, timeout=left))
        stuck = [t for t in pending if not t.done()]
        if stuck:
            log.error("asyncio bridge shutdown: %d task(s) ignored cancellation for %.1fs and are abandoned: %s",
                      len(stuck), self.shutdown_timeout, ", ".join(sorted(t.get_name() for t in stuck)))
        loop.run_until_complete(loop.shutdown_asyncgens())
        left = max(deadline - loop.time(), 0.1)
        try:
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), left))
        except asyncio.TimeoutError:
            log.error("asyncio bridge shutdown: executor threads still busy after %.1fs", self.shutdown_timeout)

    def _fail_outstanding(self) -> None:  # trio thread, after the loop closed
        for call in self._outstanding:
            if not call.done.is_set():
                call.outcome = outcome.Error(BridgeClosed(f"{_name(call.fn)}: the asyncio bridge closed"))
                call.done.set()

    async def _stop(self) -> None:
        self._closing = True
        loop, thread = self._loop, self._thread
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # already closed
                pass
        if thread is not None:
            await trio.to_thread.run_sync(thread.join, self.shutdown_timeout + 2.0, abandon_on_cancel=True)
            if thread.is_alive():
                log.error("the asyncio thread did not stop within %.0fs; abandoned (daemon thread)",
                          self.shutdown_timeout + 2.0)

    def _submit(self, callback: Callable[[_Call], None], call: _Call) -> None:
        if self._closing or self._loop is None:
            state = "closed" if self._closing else "not started"
            raise BridgeClosed(f"{_name(call.fn)}: the asyncio bridge is {state}")
        try:
            self._loop.call_soon_threadsafe(callback, call)
        except RuntimeError as e:  # loop closed under us
            raise BridgeClosed(f"{_name(call.fn)}: the asyncio bridge is closed") from e

    def _deliver(self, call: _Call, result: outcome.Outcome) -> None:  # loop thread
        call.outcome = result
        try:
            self._token.run_sync_soon(call.done.set)
        except trio.RunFinishedError:
            pass

    # ------------------------------------------------------------------ loop-thread halves of the calls
    def _start_task(self, call: _Call) -> None:
        if self._closing:
            self._deliver(call, outcome.Error(BridgeClosed(f"{_name(call.fn)}: the asyncio bridge is closing")))
            return
        try:
            aw = call.fn(*call.args)
            if not asyncio.iscoroutine(aw):
                if not inspect.isawaitable(aw):
                    raise TypeError(f"{_name(call.fn)} returned {type(aw).__name__}, not an awaitable "
                                    "(use run_sync for plain callables)")
                aw = _await(aw)  # a future or other awaitable (bacpypes3's who_is returns one)
            task = self._loop.create_task(aw)
        except BaseException as e:
            self._deliver(call, outcome.Error(e))
            return
        call.task = task
        task.add_done_callback(lambda t: self._task_done(call, t))

    def _task_done(self, call: _Call, task: asyncio.Task) -> None:
        if task.cancelled():
            if call.trio_cancelled:
                result: outcome.Outcome = _CANCELLED_BY_TRIO
            elif self._closing:
                result = outcome.Error(BridgeClosed(f"{_name(call.fn)}: cancelled by the asyncio bridge shutdown"))
            else:
                result = outcome.Error(AsyncioCancelled(f"{_name(call.fn)} was cancelled on the asyncio side"))
        else:
            exc = task.exception()  # retrieved here, so asyncio never logs "exception never retrieved"
            result = outcome.Error(exc) if exc is not None else outcome.Value(task.result())
        self._deliver(call, result)

    def _cancel_task(self, call: _Call) -> None:
        task = call.task
        if task is not None and not task.done():
            call.trio_cancelled = True
            task.cancel(msg="cancelled from trio")

    def _call_sync(self, call: _Call) -> None:
        if self._closing:
            self._deliver(call, outcome.Error(BridgeClosed(f"{_name(call.fn)}: the asyncio bridge is closing")))
            return
        self._deliver(call, outcome.capture(call.fn, *call.args))

    # ------------------------------------------------------------------ public calls (trio side)
    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await fn(*args)`` as a task on the asyncio loop; its result or exception, in trio.

        ``fn`` is an async function (or anything returning an awaitable, e.g. a future-returning
        method); it is *called* on the loop thread. Pass the function and its arguments, not a
        coroutine object. Cancellation: see the module docstring.
        """
        if inspect.iscoroutine(fn):
            fn.close()
            raise TypeError("AsyncioBridge.run takes the async function and its arguments, not a coroutine: "
                            "the coroutine must be created on the loop thread")
        return await self._call(self._start_task, _Call(fn, args), cancel_task=True)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` called on the loop thread (constructors that need the running loop).

        Not cancellable, like ``trio.to_thread.run_sync``: the callable runs to completion and its
        result is returned; a trio cancellation meanwhile hits the caller's next checkpoint. Only
        if the loop thread does not get to it within ``cancel_grace`` does ``Cancelled`` propagate.
        """
        return await self._call(self._call_sync, _Call(fn, args), cancel_task=False)

    async def _call(self, on_loop: Callable[[_Call], None], call: _Call, cancel_task: bool) -> Any:
        self._submit(on_loop, call)
        self.calls += 1
        self._outstanding.add(call)
        try:
            await call.done.wait()
        except trio.Cancelled:
            if cancel_task:
                try:
                    self._loop.call_soon_threadsafe(self._cancel_task, call)
                except RuntimeError:  # loop closed: _fail_outstanding wakes us
                    pass
            # wait (shielded, bounded) until the loop side has finished
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.cancel_grace):
                    await call.done.wait()
            if not call.done.is_set():
                log.error("asyncio call %s did not finish within %.1fs of its cancellation; abandoned",
                          _name(call.fn), self.cancel_grace)
                raise
            if call.outcome is _CANCELLED_BY_TRIO:  # the asyncio task was cancelled as asked
                raise
            # it finished anyway: deliver its outcome rather than drop it
        finally:
            self._outstanding.discard(call)
        return call.outcome.unwrap()

    def call_soon_in_trio(self, fn: Callable[..., Any], *args: Any) -> bool:
        """From the loop thread: run ``fn(*args)`` soon on the trio thread (not awaited).

        An exception from ``fn`` is logged, not raised: a bare ``run_sync_soon`` callback that
        raises would crash the whole trio run. False if trio has already finished.
        """
        def guarded() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("callback %s from the asyncio thread failed", _name(fn))

        try:
            self._token.run_sync_soon(guarded)
            return True
        except trio.RunFinishedError:
            return False

    @asynccontextmanager
    async def channel(self, max_buffer: int = 1000) -> AsyncIterator[tuple[Callable[[Any], bool], AsyncioChannel]]:
        """``async with aio.channel(n) as (send, receive):`` asyncio-side callbacks call ``send(item)``
        (non-blocking; drops the oldest item when ``n`` are waiting, counted in ``receive.dropped``);
        trio reads ``await receive.receive()`` or ``async for item in receive``. Leaving the block
        closes the channel: later sends are discarded and return False.
        """
        ch = AsyncioChannel(self._token, max_buffer)
        try:
            yield ch.send, ch
        finally:
            ch.close()


@asynccontextmanager
async def open_asyncio_bridge(cancel_grace: float = 5.0, *, shutdown_timeout: float = 5.0
                              ) -> AsyncIterator[AsyncioBridge]:
    """Start the asyncio thread; on exit cancel what is pending on it, close the loop, join the thread."""
    bridge = AsyncioBridge(cancel_grace, shutdown_timeout)
    await bridge._start()
    try:
        yield bridge
    finally:
        with trio.CancelScope(shield=True):
            await bridge._stop()
