"""QuotaState / QuotaRegistry rules (design.md 4.1 and 4.3), with injected time."""

from __future__ import annotations

import pytest

from agent_magics.config import key_fingerprint
from agent_magics.quota import QuotaRegistry, QuotaState


def make_state(clock, jitter=lambda base: 0.0) -> QuotaState:
    return QuotaState("k", clock=clock, sleep=clock.sleep, jitter=jitter)


@pytest.mark.parametrize(("hits", "retry_after", "expected"), [
    (1, 0.0, 1.0),      # 2 ** 0
    (2, 0.0, 2.0),
    (3, 0.0, 4.0),
    (4, 0.5, 8.0),
    (8, 0.0, 120.0),    # 2 ** 7 = 128 capped at 120
    (20, 0.0, 120.0),
    (1, 30.0, 30.0),    # the server's hint wins when larger
    (3, 3.0, 4.0),
])
def test_backoff_formula(clock, hits, retry_after, expected):
    state = make_state(clock)
    delay = None
    for _ in range(hits):
        delay = state.record_quota_hit(retry_after)
    assert delay == pytest.approx(expected)
    assert state.backoff_remaining() == pytest.approx(expected)
    assert state.consecutive_hits == hits
    assert state.total_hits == hits


def test_jitter_is_added_but_bounded(clock):
    state = make_state(clock, jitter=lambda base: 99.0)  # a misbehaving jitter source
    delay = state.record_quota_hit(2.0)
    assert 2.0 < delay <= 3.0  # at most 1 s of jitter, whatever the source says


def test_default_jitter_is_small(clock):
    state = QuotaState("k", clock=clock, sleep=clock.sleep)
    delays = [QuotaState("k", clock=clock, sleep=clock.sleep).record_quota_hit(10.0)
              for _ in range(50)]
    assert all(10.0 <= d <= 11.0 for d in delays)
    assert state.backoff_remaining() == 0


async def test_wait_for_quota_sleeps_out_the_backoff(clock):
    state = make_state(clock)
    assert await state.wait_for_quota() == 0.0  # no backoff, no sleep
    assert clock.sleeps == []
    state.record_quota_hit(5.0)
    waited = await state.wait_for_quota()
    assert waited == pytest.approx(5.0)
    assert clock.sleeps == [pytest.approx(5.0)]
    assert state.snapshot()["total_wait_s"] == pytest.approx(5.0)
    assert state.snapshot()["status"] == "ok"


async def test_a_hit_while_waiting_extends_the_wait(clock):
    state = make_state(clock)
    state.record_quota_hit(2.0)
    real_sleep = clock.sleep
    extended = []

    async def sleep(seconds):
        await real_sleep(seconds)
        if not extended:
            extended.append(True)
            state.record_quota_hit(3.0)  # another handle on the key hit the limit meanwhile

    state._sleep = sleep
    waited = await state.wait_for_quota()
    assert waited == pytest.approx(2.0 + 3.0)


def test_record_success_resets_consecutive_hits_only(clock):
    state = make_state(clock)
    state.record_quota_hit(0)
    state.record_quota_hit(0)
    state.record_success()
    assert state.consecutive_hits == 0
    assert state.total_hits == 2
    assert state.record_quota_hit(0) == pytest.approx(1.0)  # sequence starts again


def test_snapshot_and_observers(clock):
    state = make_state(clock)
    seen = []
    unsubscribe = state.subscribe(seen.append)
    state.record_quota_hit(4.0)
    assert seen[-1]["status"] == "backing_off"
    assert seen[-1]["backoff_remaining_s"] == pytest.approx(4.0)
    assert seen[-1]["consecutive_hits"] == 1
    assert set(seen[-1]) >= {"key_id", "status", "backoff_remaining_s", "consecutive_hits",
                             "total_hits", "total_wait_s"}
    clock.now += 4.0
    assert state.snapshot()["status"] == "ok"
    unsubscribe()
    count = len(seen)
    state.record_quota_hit(1.0)
    assert len(seen) == count


def test_a_failing_observer_does_not_break_the_state(clock):
    state = make_state(clock)

    def broken(snapshot):
        raise RuntimeError("widget gone")

    state.subscribe(broken)
    assert state.record_quota_hit(1.0) == pytest.approx(1.0)


def test_registry_shares_per_key_and_isolates_keys(registry):
    a1 = registry.state_for_key("key-a")
    a2 = registry.state_for_key("key-a")
    b = registry.state_for_key("key-b")
    assert a1 is a2
    assert a1 is not b
    a1.record_quota_hit(3.0)
    assert b.backoff_remaining() == 0
    assert a2.backoff_remaining() == pytest.approx(3.0)


def test_registry_keeps_only_fingerprints(registry):
    secret = "sk-test-THIS-IS-A-SECRET-KEY-1234567890"
    state = registry.state_for_key(secret)
    assert state.key_id == key_fingerprint(secret) == key_fingerprint(secret)[:12]
    assert len(state.key_id) == 12
    dumped = repr(registry) + repr(state) + repr(registry.snapshot()) + repr(vars(registry))
    assert secret not in dumped
    assert secret in registry  # lookups by the key still work


def test_registry_record_success_all(registry):
    for key in ("a", "b", ""):
        registry.state_for_key(key).record_quota_hit(0)
    registry.record_success_all()
    assert all(s.consecutive_hits == 0 for s in registry.states())


def test_default_registry_is_a_singleton():
    assert QuotaRegistry.default() is QuotaRegistry.default()


# -- client-side pacing (rpm / tpm) ------------------------------------------------------------

async def test_rpm_spaces_request_starts_across_callers(clock):
    import asyncio

    state = make_state(clock)
    state.set_limits(rpm=120)  # one start every 0.5 s
    starts = []

    async def caller():
        await state.wait_for_quota()
        starts.append(clock.now)

    await asyncio.gather(*(caller() for _ in range(4)))
    assert sorted(starts) == [pytest.approx(1000.0 + 0.5 * i) for i in range(4)]
    assert state.snapshot()["rpm"] == 120


async def test_rpm_slot_is_kept_while_a_backoff_is_waited_out(clock):
    state = make_state(clock)
    state.set_limits(rpm=60)
    assert await state.wait_for_quota() == 0.0  # takes the slot at t=0
    state.record_quota_hit(5.0)
    waited = await state.wait_for_quota()
    assert waited == pytest.approx(5.0)  # the backoff (longer than the 1 s slot) decides


async def test_tpm_waits_until_the_last_minutes_tokens_fall_under_the_limit(clock):
    state = make_state(clock)
    state.set_limits(tpm=100)
    state.record_success(tokens=80)
    clock.now += 10
    state.record_success(tokens=30)  # 110 tokens in the last minute: over
    assert state.snapshot()["tokens_last_minute"] == 110
    waited = await state.wait_for_quota()
    assert waited == pytest.approx(50.0)  # until the 80-token call is a minute old
    assert state.snapshot()["tokens_last_minute"] == 30


def test_limits_are_validated(clock):
    from agent_magics.errors import ConfigError

    state = make_state(clock)
    for bad in (0, -5, True):
        with pytest.raises(ConfigError, match="rpm"):
            state.set_limits(rpm=bad)
    state.set_limits(rpm=10)
    state.set_limits(rpm=None)
    assert state.rpm is None


async def test_agents_pace_a_shared_key_from_their_config(registry, clock):
    from agent_magics import Agent
    from agent_magics.runtimes.scripted import ScriptedRuntime

    runtime = ScriptedRuntime(quota_registry=registry)
    a = Agent(runtime=runtime, store=":memory:", name="a", api_key="shared-key", rpm=30)
    b = Agent(runtime=runtime, store=":memory:", name="b", api_key="shared-key")
    await a.chat_text("one")
    await b.chat_text("two")  # b has no rpm of its own, but the key is paced
    await a.chat_text("three")
    assert clock.sleeps == [pytest.approx(2.0), pytest.approx(2.0)]
    assert a.quota is b.quota and a.quota.rpm == 30


def test_hits_from_one_burst_do_not_escalate_the_backoff(clock):
    state = make_state(clock)
    started = state.now()  # sixteen calls leave together...
    clock.now += 0.1
    delays = [state.record_quota_hit(0.5, started_at=started) for _ in range(16)]
    assert state.consecutive_hits == 1  # ...and are refused together: one hit's worth
    assert state.total_hits == 16
    assert delays == [pytest.approx(1.0)] * 16
    clock.now += 1.0
    retried = state.now()  # a call made after the backoff began is new evidence
    clock.now += 0.1
    assert state.record_quota_hit(0.5, started_at=retried) == pytest.approx(2.0)
    assert state.consecutive_hits == 2


def test_without_a_start_time_every_hit_escalates(clock):
    state = make_state(clock)
    assert [state.record_quota_hit(0.0) for _ in range(3)] == \
        [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(4.0)]
