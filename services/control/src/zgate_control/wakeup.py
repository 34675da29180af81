"""Waking relays' long polls when the change log grows.

A long poll watches `Wakeups` (one per app, on ``app.state.wakeups``) and re-checks the table
when woken, or every ``poll_interval`` seconds anyway, so a lost wake-up costs at most that.
Wake-ups come from two places:

- this process: committing a session in which `changelog.append` ran wakes every `Wakeups`
  over the same database (a SQLAlchemy ``after_commit`` hook the append installs, so callers
  need not remember; `notify_committed` does the same by hand);
- other processes over one PostgreSQL database: ``NOTIFY zgate_changes`` is sent in the
  appending transaction and `Wakeups` holds ``LISTEN zgate_changes`` on a dedicated psycopg
  connection in a background task (reconnecting with back-off). The payload is the seq only.

Wake-ups never carry data: the waiter always reads the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Final

import psycopg
from sqlalchemy import event
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from zgate_control.db import Database
    from zgate_control.metrics import ControlMetrics

__all__ = ["CHANNEL", "Wakeups", "after_commit_wake", "for_app", "notify_committed"]

log = logging.getLogger("zgate.control.wakeup")

#: The PostgreSQL NOTIFY channel.
CHANNEL: Final = "zgate_changes"
_PENDING: Final = "zgate_changes_pending"
_HOOKED: Final = "zgate_changes_hooked"
_MAX_BACKOFF: Final = 30.0

_lock = threading.RLock()
_registry: list[Wakeups] = []


def _registered() -> list[Wakeups]:
    with _lock:
        return list(_registry)


def _committed(session: Session) -> None:
    kinds: list[str] = session.info.pop(_PENDING, [])
    if not kinds:
        return
    pool = getattr(session.get_bind(), "pool", None)
    for wakeups in _registered():
        if wakeups.pool is pool:
            wakeups.committed(kinds)


def _rolled_back(session: Session, _previous: Any = None) -> None:
    session.info.pop(_PENDING, None)


def after_commit_wake(session: Session, kind: str) -> None:
    """Wake this process's waiters over `session`'s database once `session` commits
    (called by `changelog.append`; nothing happens on rollback)."""
    session.info.setdefault(_PENDING, []).append(kind)
    if not session.info.get(_HOOKED):
        session.info[_HOOKED] = True
        event.listen(session, "after_commit", _committed)
        event.listen(session, "after_soft_rollback", _rolled_back)


def notify_committed() -> None:
    """Wake every waiter in this process (e.g. after changing the log outside `append`)."""
    for wakeups in _registered():
        wakeups.wake()


def for_app(state: Any) -> Wakeups:
    """The app's `Wakeups` (``app.state.wakeups``), created on first use over ``state.db``
    with ``state.metrics``; the app's lifespan closes it."""
    with _lock:
        wakeups: Wakeups | None = getattr(state, "wakeups", None)
        if wakeups is None:
            wakeups = Wakeups(state.db, metrics=getattr(state, "metrics", None))
            state.wakeups = wakeups
        return wakeups


class Wakeups:
    """What long polls wait on: woken after a local commit that appended, or by PostgreSQL
    NOTIFY from any process. Construct anywhere; use `watch` and `wait` in the event loop."""

    def __init__(self, database: Database, *, metrics: ControlMetrics | None = None) -> None:
        self._database = database
        self.pool = database.engine.pool
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._closed = False
        with _lock:
            _registry.append(self)

    @property
    def listening(self) -> bool:
        """True while the PostgreSQL LISTEN connection is up."""
        return self._listening

    def watch(self) -> asyncio.Event:
        """The event the next wake-up sets. Take it BEFORE reading the table, then `wait` on
        it: a commit between the read and the wait is not missed."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        if self._event is None:
            self._event = asyncio.Event()
        if self._listener is None and not self._closed and self._database.dialect == "postgresql":
            self._listener = loop.create_task(self._listen(), name="zgate-control-listen")
        return self._event

    async def wait(self, watched: asyncio.Event, timeout: float) -> bool:
        """Wait until `watched` is set or `timeout` seconds pass; True if woken."""
        try:
            await asyncio.wait_for(watched.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def committed(self, kinds: list[str]) -> None:
        """A local transaction that appended `kinds` committed: count them, wake the waiters."""
        if self._metrics is not None:
            for kind in kinds:
                self._metrics.changes.labels(kind).inc()
        self.wake()

    def wake(self) -> None:
        """Wake every waiter; safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # nobody ever waited
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake_now()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake_now)

    def _wake_now(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()

    def _conninfo(self) -> str:
        url = self._database.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    async def _listen(self) -> None:
        backoff = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo(), autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self._listening = True
                    backoff = 1.0
                    self._wake_now()  # anything NOTIFYed while we were not listening
                    async for _ in connection.notifies():
                        self._wake_now()
            except psycopg.Error as exc:
                log.warning(
                    "lost the LISTEN connection for change wake-ups; polling meanwhile",
                    extra={"error": str(exc), "retry_in": backoff},
                )
            finally:
                self._listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def close(self) -> None:
        """Stop listening, wake the waiters and forget this object."""
        self._closed = True
        with _lock:
            if self in _registry:
                _registry.remove(self)
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self._wake_now()
