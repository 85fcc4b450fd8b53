"""Test doubles shared by several test modules."""

from __future__ import annotations


class FakeClock:
    """Injected time for QuotaState: ``sleep`` advances the clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
