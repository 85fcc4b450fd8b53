import { describe, expect, it } from 'vitest';

import {
  PanelModel,
  cancelRoute,
  emptyMessage,
  formatCount,
  formatSeconds,
  isBusy,
  statusText
} from '../src/model';
import { Clock, agent, quota, snapshot } from './fixtures';

describe('PanelModel', () => {
  it('counts quota waits down locally from when the snapshot arrived', () => {
    const clock = new Clock();
    const model = new PanelModel(clock.now);
    const waiting = agent({ status: 'waiting', wait_remaining_s: 5 });
    const key = quota({ status: 'backing_off', backoff_remaining_s: 5 });
    model.applySnapshot(snapshot(1, [waiting], [key]));
    expect(model.agentWait(waiting)).toBe(5);
    clock.advance(1500);
    expect(model.agentWait(waiting)).toBeCloseTo(3.5);
    expect(model.quotaWait(key)).toBeCloseTo(3.5);
    clock.advance(10_000);
    expect(model.agentWait(waiting)).toBe(0);
    expect(model.agentWait(agent({ status: 'streaming' }))).toBeNull();
    expect(model.quotaWait(quota())).toBe(0);
  });

  it('ignores an older snapshot that arrives late', () => {
    const model = new PanelModel();
    model.applySnapshot(snapshot(5, [agent({ turns: 2 })]));
    model.applySnapshot(snapshot(4, [agent({ turns: 1 })]));
    expect(model.state.snapshot?.agents[0].turns).toBe(2);
  });

  it('forgets agents when the connection drops, and notifies subscribers', () => {
    const model = new PanelModel();
    const seen: string[] = [];
    const unsubscribe = model.subscribe(state => seen.push(state.connection));
    model.applySnapshot(snapshot(1, [agent()]));
    model.setConnection('restarting');
    expect(model.state.snapshot).toBeNull();
    // after a restart the kernel counts from 1 again: accepted
    model.applySnapshot(snapshot(1, [agent({ name: 'fresh' })]));
    expect(model.state.snapshot?.agents[0].name).toBe('fresh');
    unsubscribe();
    model.setConnection('no-kernel');
    expect(seen).toEqual(['connected', 'restarting', 'connected']);
  });

  it('keeps the last action result as a notice', () => {
    const model = new PanelModel();
    model.applyResult({ type: 'result', request_id: 'x', ok: false, message: 'busy' });
    expect(model.state.notice?.message).toBe('busy');
  });
});

describe('formatting', () => {
  it('formats counts and countdowns for reading', () => {
    expect(formatCount(0)).toBe('0');
    expect(formatCount(12345)).toBe('12,345');
    expect(formatCount(2_500_000)).toBe('2.5M');
    expect(formatSeconds(0)).toBe('0s');
    expect(formatSeconds(0.2)).toBe('1s');
    expect(formatSeconds(59.5)).toBe('1m 00s');
    expect(formatSeconds(125)).toBe('2m 05s');
  });

  it('says what an agent is doing, with the countdown and attempt while it waits', () => {
    const waiting = agent({ status: 'waiting', attempt: 2, max_attempts: 6 });
    expect(statusText(waiting, 3.2)).toBe('waiting for quota · 4s · attempt 2/6');
    expect(statusText(agent({ status: 'streaming', attempt: 1 }), null)).toBe('streaming');
    expect(statusText(agent({ status: 'idle', attempt: 3 }), null)).toBe('idle');
    expect(isBusy(agent({ status: 'tool' }))).toBe(true);
    expect(isBusy(agent({ status: 'error' }))).toBe(false);
  });

  it('explains every empty state', () => {
    const model = new PanelModel();
    expect(emptyMessage(model.state)).toMatch(/Open a notebook/);
    model.setConnection('not-loaded');
    expect(emptyMessage(model.state)).toMatch(/%load_ext agent_magics/);
    model.setConnection('restarting');
    expect(emptyMessage(model.state)).toMatch(/restarting/);
    model.applySnapshot(snapshot(1, []));
    expect(emptyMessage(model.state)).toMatch(/No agents yet/);
    model.applySnapshot(snapshot(2, [agent()]));
    expect(emptyMessage(model.state)).toBeNull();
  });
});

describe('cancelRoute', () => {
  it('interrupts the kernel only for a foreground turn on a kernel without subshells', () => {
    expect(cancelRoute(agent({ status: 'streaming', foreground: true }), false)).toBe('interrupt');
    expect(cancelRoute(agent({ status: 'streaming', foreground: true }), true)).toBe('message');
    expect(cancelRoute(agent({ status: 'streaming', foreground: false }), false)).toBe('message');
  });
});
