"""Per-API-key quota state shared by every handle on that key (design.md section 4.1-4.3).

No I/O here: time comes from an injectable ``clock`` and waiting from an injectable ``sleep``,
so the backoff rules are tested without real sleeping. Only a fingerprint of each key is kept.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import key_fingerprint

__all__ = ["MAX_BACKOFF_S", "QuotaRegistry", "QuotaState"]

log = logging.getLogger("agent_magics.quota")

#: Upper bound of the exponential part of the backoff (seconds).
MAX_BACKOFF_S = 120.0
#: Jitter is at most this fraction of the backoff, and never more than MAX_JITTER_S.
JITTER_FRACTION = 0.1
MAX_JITTER_S = 1.0

Observer = Callable[[dict[str, Any]], None]


def default_jitter(delay: float) -> float:
    return random.uniform(0.0, min(MAX_JITTER_S, JITTER_FRACTION * delay))


class QuotaState:
    """Backoff bookkeeping for one API key.

    ``record_quota_hit(retry_after)`` backs the key off for
    ``max(retry_after, min(2 ** (consecutive_hits - 1), 120))`` seconds plus a bounded jitter;
    ``wait_for_quota()`` sleeps until that backoff has passed; ``record_success()`` resets the
    consecutive-hit count. Observers get a :meth:`snapshot` after every change.
    """

    def __init__(self, key_id: str = "", *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 jitter: Callable[[float], float] = default_jitter):
        self.key_id = key_id
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._jitter = jitter
        self._lock = threading.Lock()  # observers and snapshots may run on other threads
        self._backoff_until = 0.0
        self._waiting = 0
        self.consecutive_hits = 0
        self.total_hits = 0
        self.total_wait_s = 0.0
        self.last_retry_after: float | None = None
        self._observers: list[Observer] = []

    # -- state ----------------------------------------------------------------------------

    def backoff_remaining(self) -> float:
        return max(0.0, self._backoff_until - self._clock())

    @property
    def is_backing_off(self) -> bool:
        return self.backoff_remaining() > 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            remaining = self.backoff_remaining()
            return {
                "key_id": self.key_id,
                "status": "backing_off" if remaining > 0 else "ok",
                "backoff_remaining_s": remaining,
                "consecutive_hits": self.consecutive_hits,
                "total_hits": self.total_hits,
                "total_wait_s": self.total_wait_s,
                "waiting": self._waiting,
                "last_retry_after_s": self.last_retry_after,
            }

    # -- changes --------------------------------------------------------------------------

    def backoff_for(self, retry_after: float, consecutive_hits: int) -> float:
        """The seed's formula, without jitter."""
        exponential = min(2.0 ** (max(consecutive_hits, 1) - 1), MAX_BACKOFF_S)
        return max(float(retry_after), exponential)

    def record_quota_hit(self, retry_after: float) -> float:
        """Back this key off; returns the delay chosen (seconds from now)."""
        with self._lock:
            self.consecutive_hits += 1
            self.total_hits += 1
            self.last_retry_after = float(retry_after)
            base = self.backoff_for(retry_after, self.consecutive_hits)
            delay = base + max(0.0, min(self._jitter(base), MAX_JITTER_S))
            self._backoff_until = max(self._backoff_until, self._clock() + delay)
        self._notify()
        return delay

    def record_success(self) -> None:
        """A call went through: the next hit starts the exponential sequence again."""
        with self._lock:
            changed = self.consecutive_hits != 0
            self.consecutive_hits = 0
        if changed:
            self._notify()

    def reset(self) -> None:
        with self._lock:
            self._backoff_until = 0.0
            self.consecutive_hits = 0
        self._notify()

    async def wait_for_quota(self) -> float:
        """Sleep until no backoff is active (a hit meanwhile extends it); returns seconds waited."""
        waited = 0.0
        remaining = self.backoff_remaining()
        if remaining <= 0:
            return 0.0
        with self._lock:
            self._waiting += 1
        try:
            while remaining > 0:
                self._notify()
                start = self._clock()
                await self._sleep(remaining)
                slept = max(0.0, self._clock() - start)
                waited += slept
                with self._lock:
                    self.total_wait_s += slept
                remaining = self.backoff_remaining()
        finally:
            with self._lock:
                self._waiting -= 1
            self._notify()
        return waited

    # -- observers ------------------------------------------------------------------------

    def subscribe(self, callback: Observer) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every change; returns an unsubscribe function."""
        with self._lock:
            self._observers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._observers:
                    self._observers.remove(callback)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            observers = list(self._observers)
        if not observers:
            return
        snap = self.snapshot()
        for callback in observers:
            try:
                callback(snap)
            except Exception:  # an observer (a widget) must never break a call
                log.exception("quota observer %r failed", callback)

    def __repr__(self) -> str:
        s = self.snapshot()
        return (f"QuotaState(key_id={s['key_id']!r}, status={s['status']!r}, "
                f"backoff_remaining_s={s['backoff_remaining_s']:.1f}, "
                f"consecutive_hits={s['consecutive_hits']}, total_hits={s['total_hits']})")


class QuotaRegistry:
    """Maps API keys (by fingerprint only) to their shared :class:`QuotaState`."""

    _default: QuotaRegistry | None = None

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 jitter: Callable[[float], float] = default_jitter):
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._states: dict[str, QuotaState] = {}
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> QuotaRegistry:
        """The process-wide registry that real backends share."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def state_for_key(self, key: str | None) -> QuotaState:
        key_id = key_fingerprint(key)
        with self._lock:
            state = self._states.get(key_id)
            if state is None:
                state = QuotaState(key_id, clock=self._clock, sleep=self._sleep,
                                   jitter=self._jitter)
                self._states[key_id] = state
            return state

    def states(self) -> list[QuotaState]:
        with self._lock:
            return list(self._states.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [state.snapshot() for state in self.states()]

    def record_success_all(self) -> None:
        for state in self.states():
            state.record_success()

    def __contains__(self, key: str | None) -> bool:
        return key_fingerprint(key) in self._states

    def __len__(self) -> int:
        return len(self._states)

    def __repr__(self) -> str:
        return f"QuotaRegistry({len(self)} key(s))"
