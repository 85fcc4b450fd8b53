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
from collections import deque
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
        # Client-side pacing (optional): requests and tokens per minute for this key.
        self.rpm: float | None = None
        self.tpm: float | None = None
        self._next_slot = 0.0  # rpm: earliest start of the next request
        self._last_hit_at = float("-inf")
        self._tokens: deque[tuple[float, int]] = deque()  # tpm: (time, tokens) in the last 60 s
        self._token_sum = 0

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
                "rpm": self.rpm,
                "tpm": self.tpm,
                "tokens_last_minute": self._tokens_in_window(self._clock()),
            }

    # -- changes --------------------------------------------------------------------------

    def backoff_for(self, retry_after: float, consecutive_hits: int) -> float:
        """The seed's formula, without jitter."""
        exponential = min(2.0 ** (max(consecutive_hits, 1) - 1), MAX_BACKOFF_S)
        return max(float(retry_after), exponential)

    def now(self) -> float:
        """The state's clock (pass it back as ``record_quota_hit(started_at=...)``)."""
        return self._clock()

    def record_quota_hit(self, retry_after: float, *, started_at: float | None = None) -> float:
        """Back this key off; returns the delay chosen (seconds from now).

        ``started_at`` (the refused call's start on :meth:`now`'s clock) tells one burst from
        a sequence: calls that were already in flight when an earlier hit was recorded do not
        escalate the exponential backoff again (sixteen concurrent calls refused together are
        one hit's worth of evidence, not sixteen); they still extend the backoff at the current
        level. Without ``started_at`` every hit counts, as in the seed.
        """
        with self._lock:
            now = self._clock()
            same_burst = started_at is not None and started_at < self._last_hit_at \
                and self.consecutive_hits > 0
            if not same_burst:
                self.consecutive_hits += 1
            self._last_hit_at = now
            self.total_hits += 1
            self.last_retry_after = float(retry_after)
            base = self.backoff_for(retry_after, self.consecutive_hits)
            delay = base + max(0.0, min(self._jitter(base), MAX_JITTER_S))
            self._backoff_until = max(self._backoff_until, now + delay)
        self._notify()
        return delay

    def record_success(self, tokens: int = 0) -> None:
        """A call went through: the next hit starts the exponential sequence again.
        ``tokens`` (the call's total) count against ``tpm`` for the next minute."""
        with self._lock:
            changed = self.consecutive_hits != 0
            self.consecutive_hits = 0
            if tokens > 0 and self.tpm:
                self._tokens.append((self._clock(), int(tokens)))
                self._token_sum += int(tokens)
        if changed:
            self._notify()

    def set_limits(self, *, rpm: float | None = None, tpm: float | None = None) -> None:
        """Pace this key's requests client-side: at most ``rpm`` request starts and ``tpm``
        tokens a minute across every handle on the key, so they stay under the provider's
        limits instead of collecting 429s. ``None`` removes a limit."""
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (isinstance(value, bool) or not value > 0):
                from .errors import ConfigError

                raise ConfigError(f"{name} must be a number > 0 (or None for no limit), "
                                  f"got {value!r}")
        with self._lock:
            self.rpm = float(rpm) if rpm else None
            self.tpm = float(tpm) if tpm else None
        self._notify()

    def _tokens_in_window(self, now: float) -> int:
        tokens = self._tokens
        while tokens and tokens[0][0] <= now - 60.0:
            self._token_sum -= tokens.popleft()[1]
        return self._token_sum

    def _tpm_delay(self, now: float) -> float:
        """Seconds until the last minute's tokens drop below ``tpm`` (0 if already)."""
        if not self.tpm or self._tokens_in_window(now) < self.tpm:
            return 0.0
        excess = self._token_sum - self.tpm
        for at, n in self._tokens:
            excess -= n
            if excess < 0:
                return max(0.0, at + 60.0 - now)
        return 0.0

    def _reserve_slot(self, now: float) -> float:
        """Take the next rpm slot; returns the seconds to wait for it (0 if no rpm)."""
        if not self.rpm:
            return 0.0
        slot = max(now, self._next_slot)
        self._next_slot = slot + 60.0 / self.rpm
        return slot - now

    def reset(self) -> None:
        with self._lock:
            self._backoff_until = 0.0
            self.consecutive_hits = 0
        self._notify()

    def _delay(self, reserved: bool) -> tuple[float, bool]:
        """(seconds to wait now, whether an rpm slot is now reserved)."""
        with self._lock:
            now = self._clock()
            delay = max(self._backoff_until - now, self._tpm_delay(now), 0.0)
            if delay > 0 or reserved:
                return delay, reserved
            return self._reserve_slot(now), True

    async def wait_for_quota(self) -> float:
        """Sleep until this key may send: no backoff active (a hit meanwhile extends it), the
        last minute's tokens under ``tpm``, and a free ``rpm`` slot. Returns seconds waited."""
        remaining, reserved = self._delay(False)
        if remaining <= 0:
            return 0.0
        waited = 0.0
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
                remaining, reserved = self._delay(reserved)
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
