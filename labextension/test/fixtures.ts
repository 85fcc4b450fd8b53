import { IAgentInfo, IQuotaInfo, ISnapshot } from '../src/protocol';

export function agent(over: Partial<IAgentInfo> = {}): IAgentInfo {
  return {
    name: 'analyst',
    model: 'scripted:echo',
    status: 'idle',
    foreground: false,
    wait_remaining_s: null,
    attempt: 0,
    max_attempts: 6,
    turns: 0,
    input_tokens: 0,
    output_tokens: 0,
    total_tokens: 0,
    error: null,
    key: 'key-3f9a',
    parent: null,
    ...over
  };
}

export function quota(over: Partial<IQuotaInfo> = {}): IQuotaInfo {
  return {
    key: 'key-3f9a',
    status: 'ok',
    backoff_remaining_s: 0,
    consecutive_hits: 0,
    total_hits: 0,
    total_wait_s: 0,
    waiting: 0,
    rpm: null,
    tpm: null,
    tokens_last_minute: 0,
    agents: ['analyst'],
    ...over
  };
}

export function snapshot(seq: number, agents: IAgentInfo[], quotas: IQuotaInfo[] = []): ISnapshot {
  return { type: 'snapshot', version: 1, seq, agents, quota: quotas };
}

/** A clock the test moves by hand (milliseconds). */
export class Clock {
  t = 1_000_000;
  now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}
