/**
 * The messages on the `agent_magics` comm (protocol version 1), and a validator that turns
 * untrusted comm data into typed messages. The kernel side is agent_magics/kernel/panel.py.
 */

export const COMM_TARGET = 'agent_magics';
export const PROTOCOL_VERSION = 1;

export type AgentStatus =
  | 'idle'
  | 'queued'
  | 'calling'
  | 'streaming'
  | 'tool'
  | 'waiting'
  | 'error'
  | 'shut_down';

export interface IAgentInfo {
  name: string;
  model: string;
  status: AgentStatus;
  /** The agent's turn blocks the kernel (a foreground cell): cancel by interrupting. */
  foreground: boolean;
  wait_remaining_s: number | null;
  attempt: number;
  max_attempts: number;
  turns: number;
  input_tokens: number;
  output_tokens: number;
  total_tokens: number;
  error: string | null;
  /** Fingerprint of the API key; never the key. */
  key: string;
  parent: string | null;
}

export interface IQuotaInfo {
  key: string;
  status: 'ok' | 'backing_off';
  backoff_remaining_s: number;
  consecutive_hits: number;
  total_hits: number;
  total_wait_s: number;
  waiting: number;
  rpm: number | null;
  tpm: number | null;
  tokens_last_minute: number;
  agents: string[];
}

export interface ISnapshot {
  type: 'snapshot';
  version: number;
  seq: number;
  agents: IAgentInfo[];
  quota: IQuotaInfo[];
}

export interface IResult {
  type: 'result';
  request_id: string;
  ok: boolean;
  message: string;
}

export type KernelMessage = ISnapshot | IResult;

/**
 * What the panel sends. `refresh` asks for a snapshot; it is also the panel's first message on
 * a comm the kernel opened, which the kernel keeps silent until then (a client without the
 * panel never answers). `version` (optional, ignored by older kernels) is the panel's protocol.
 */
export type Action =
  | { type: 'refresh'; version?: number }
  | { type: 'cancel'; agent: string; request_id: string }
  | { type: 'clear'; agent: string; request_id: string };

const STATUSES: ReadonlySet<string> = new Set([
  'idle',
  'queued',
  'calling',
  'streaming',
  'tool',
  'waiting',
  'error',
  'shut_down'
]);

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function num(value: unknown, fallback = 0): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

function optNum(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function str(value: unknown, fallback = ''): string {
  return typeof value === 'string' ? value : fallback;
}

function optStr(value: unknown): string | null {
  return typeof value === 'string' ? value : null;
}

function parseAgent(raw: unknown): IAgentInfo | null {
  if (!isObject(raw) || typeof raw.name !== 'string') {
    return null;
  }
  const status = str(raw.status, 'idle');
  return {
    name: raw.name,
    model: str(raw.model),
    status: (STATUSES.has(status) ? status : 'idle') as AgentStatus,
    foreground: raw.foreground === true,
    wait_remaining_s: optNum(raw.wait_remaining_s),
    attempt: num(raw.attempt),
    max_attempts: num(raw.max_attempts),
    turns: num(raw.turns),
    input_tokens: num(raw.input_tokens),
    output_tokens: num(raw.output_tokens),
    total_tokens: num(raw.total_tokens),
    error: optStr(raw.error),
    key: str(raw.key),
    parent: optStr(raw.parent)
  };
}

function parseQuota(raw: unknown): IQuotaInfo | null {
  if (!isObject(raw) || typeof raw.key !== 'string') {
    return null;
  }
  return {
    key: raw.key,
    status: raw.status === 'backing_off' ? 'backing_off' : 'ok',
    backoff_remaining_s: num(raw.backoff_remaining_s),
    consecutive_hits: num(raw.consecutive_hits),
    total_hits: num(raw.total_hits),
    total_wait_s: num(raw.total_wait_s),
    waiting: num(raw.waiting),
    rpm: optNum(raw.rpm),
    tpm: optNum(raw.tpm),
    tokens_last_minute: num(raw.tokens_last_minute),
    agents: Array.isArray(raw.agents) ? raw.agents.filter(a => typeof a === 'string') : []
  };
}

function present<T>(value: T | null): value is T {
  return value !== null;
}

/** A typed message, or null for data this version does not understand. */
export function parseMessage(data: unknown): KernelMessage | null {
  if (!isObject(data)) {
    return null;
  }
  if (data.type === 'snapshot') {
    if (num(data.version, -1) !== PROTOCOL_VERSION) {
      return null;
    }
    return {
      type: 'snapshot',
      version: PROTOCOL_VERSION,
      seq: num(data.seq),
      agents: Array.isArray(data.agents) ? data.agents.map(parseAgent).filter(present) : [],
      quota: Array.isArray(data.quota) ? data.quota.map(parseQuota).filter(present) : []
    };
  }
  if (data.type === 'result' && typeof data.request_id === 'string') {
    return {
      type: 'result',
      request_id: data.request_id,
      ok: data.ok === true,
      message: str(data.message)
    };
  }
  return null;
}
