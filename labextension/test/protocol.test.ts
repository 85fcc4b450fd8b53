import { describe, expect, it } from 'vitest';

import { parseMessage } from '../src/protocol';
import { agent } from './fixtures';

describe('parseMessage', () => {
  it('reads a snapshot and fills what is missing with safe defaults', () => {
    const message = parseMessage({
      type: 'snapshot',
      version: 1,
      seq: 4,
      agents: [{ name: 'a', status: 'waiting', wait_remaining_s: 2.5, input_tokens: 10 }],
      quota: [{ key: 'k', status: 'backing_off', backoff_remaining_s: 2.5, agents: ['a', 7] }]
    });
    expect(message?.type).toBe('snapshot');
    if (message?.type !== 'snapshot') return;
    expect(message.seq).toBe(4);
    expect(message.agents[0]).toMatchObject({ name: 'a', status: 'waiting', wait_remaining_s: 2.5 });
    expect(message.agents[0].output_tokens).toBe(0);
    expect(message.agents[0].error).toBeNull();
    expect(message.quota[0].agents).toEqual(['a']);
    expect(message.quota[0].status).toBe('backing_off');
  });

  it('drops malformed entries, unknown statuses and other protocol versions', () => {
    const message = parseMessage({
      type: 'snapshot',
      version: 1,
      seq: 1,
      agents: [null, { model: 'no name' }, { ...agent(), status: 'exploding' }, 'x'],
      quota: [{ status: 'ok' }]
    });
    expect(message?.type === 'snapshot' && message.agents.length).toBe(1);
    expect(message?.type === 'snapshot' && message.agents[0].status).toBe('idle');
    expect(message?.type === 'snapshot' && message.quota.length).toBe(0);
    expect(parseMessage({ type: 'snapshot', version: 2, seq: 1, agents: [] })).toBeNull();
    expect(parseMessage({ type: 'mystery' })).toBeNull();
    expect(parseMessage('snapshot')).toBeNull();
    expect(parseMessage(null)).toBeNull();
  });

  it('reads action results', () => {
    expect(parseMessage({ type: 'result', request_id: 'r1', ok: true, message: 'cancelled' })).toEqual({
      type: 'result',
      request_id: 'r1',
      ok: true,
      message: 'cancelled'
    });
    expect(parseMessage({ type: 'result', ok: true })).toBeNull();
  });

  it('ignores non-finite numbers', () => {
    const message = parseMessage({
      type: 'snapshot',
      version: 1,
      seq: 1,
      agents: [{ name: 'a', input_tokens: 'many', wait_remaining_s: Infinity }]
    });
    expect(message?.type === 'snapshot' && message.agents[0].input_tokens).toBe(0);
    expect(message?.type === 'snapshot' && message.agents[0].wait_remaining_s).toBeNull();
  });
});
