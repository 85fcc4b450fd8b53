/**
 * What the Agents panel shows, as plain state with no JupyterLab imports, so it is unit-tested
 * directly. Countdowns run locally from the moment a snapshot arrives, so the kernel only needs
 * to send when something changes.
 */

import { IAgentInfo, IQuotaInfo, IResult, ISnapshot } from './protocol';

/** Where the panel stands with the current notebook's kernel. */
export type Connection =
  | 'no-notebook' // no notebook is current
  | 'no-kernel' // the notebook has no running kernel
  | 'connecting' // a comm open is in flight
  | 'not-loaded' // the kernel answered, but agent_magics is not loaded there
  | 'restarting' // the kernel is restarting; state is gone until it is loaded again
  | 'connected';

export interface IPanelState {
  connection: Connection;
  snapshot: ISnapshot | null;
  /** Clock reading (ms) when the snapshot arrived, for local countdowns. */
  receivedAt: number;
  /** The last action's answer, shown as a one-line notice. */
  notice: IResult | null;
}

export type Listener = (state: IPanelState) => void;

export class PanelModel {
  private _state: IPanelState = {
    connection: 'no-notebook',
    snapshot: null,
    receivedAt: 0,
    notice: null
  };
  private _listeners = new Set<Listener>();

  constructor(private readonly _now: () => number = () => Date.now()) {}

  get state(): IPanelState {
    return this._state;
  }

  now(): number {
    return this._now();
  }

  subscribe(listener: Listener): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  setConnection(connection: Connection): void {
    // Leaving 'connected' drops the agents: a restarted kernel has none.
    const snapshot = connection === 'connected' ? this._state.snapshot : null;
    this._update({ connection, snapshot });
  }

  applySnapshot(snapshot: ISnapshot): void {
    const previous = this._state.snapshot;
    if (previous !== null && this._state.connection === 'connected' && snapshot.seq < previous.seq) {
      return; // late delivery of an older state
    }
    this._update({ connection: 'connected', snapshot, receivedAt: this._now() });
  }

  applyResult(result: IResult): void {
    this._update({ notice: result });
  }

  /** Seconds left of an agent's quota wait, counted down locally. */
  agentWait(agent: IAgentInfo): number | null {
    if (agent.status !== 'waiting' || agent.wait_remaining_s === null) {
      return null;
    }
    return this._left(agent.wait_remaining_s);
  }

  /** Seconds left of a key's backoff, counted down locally. */
  quotaWait(quota: IQuotaInfo): number {
    return quota.status === 'backing_off' ? this._left(quota.backoff_remaining_s) : 0;
  }

  private _left(seconds: number): number {
    const elapsed = (this._now() - this._state.receivedAt) / 1000;
    return Math.max(0, seconds - elapsed);
  }

  private _update(change: Partial<IPanelState>): void {
    this._state = { ...this._state, ...change };
    for (const listener of this._listeners) {
      listener(this._state);
    }
  }
}

/** 1234 -> "1,234"; 1234567 -> "1.2M". */
export function formatCount(n: number): string {
  if (n >= 1_000_000) {
    return `${(n / 1_000_000).toFixed(1)}M`;
  }
  return Math.round(n).toLocaleString('en-US');
}

/** A countdown as the user reads it: "9s", "1m 05s". Rounds up so 0.2 s still shows "1s". */
export function formatSeconds(seconds: number): string {
  const s = Math.ceil(Math.max(0, seconds));
  if (s < 60) {
    return `${s}s`;
  }
  const m = Math.floor(s / 60);
  return `${m}m ${String(s % 60).padStart(2, '0')}s`;
}

const LABELS: Record<IAgentInfo['status'], string> = {
  idle: 'idle',
  queued: 'queued',
  calling: 'calling',
  streaming: 'streaming',
  tool: 'running a tool',
  waiting: 'waiting for quota',
  error: 'error',
  shut_down: 'shut down'
};

/** One short line for an agent's status, with the live countdown while it waits. */
export function statusText(agent: IAgentInfo, waitLeft: number | null): string {
  let text = LABELS[agent.status] ?? agent.status;
  if (agent.status === 'waiting' && waitLeft !== null) {
    text += ` · ${formatSeconds(waitLeft)}`;
  }
  if (agent.attempt > 1 && agent.max_attempts > 0 && agent.status !== 'idle') {
    text += ` · attempt ${agent.attempt}/${agent.max_attempts}`;
  }
  return text;
}

export function isBusy(agent: IAgentInfo): boolean {
  return !['idle', 'error', 'shut_down'].includes(agent.status);
}

/** The empty-state message for a connection without agents, or null when agents show. */
export function emptyMessage(state: IPanelState): string | null {
  switch (state.connection) {
    case 'no-notebook':
      return 'Open a notebook to see its agents.';
    case 'no-kernel':
      return 'This notebook has no running kernel.';
    case 'connecting':
      return 'Connecting to the kernel…';
    case 'not-loaded':
      return 'agent_magics is not loaded in this kernel. Run %load_ext agent_magics in a cell.';
    case 'restarting':
      return 'The kernel is restarting. Run %load_ext agent_magics again to see agents.';
    case 'connected':
      return state.snapshot && state.snapshot.agents.length > 0
        ? null
        : 'No agents yet. Run a %%agent cell to create one.';
  }
}

/**
 * How to cancel an agent's turn. A comm message reaches the kernel during a running cell when
 * the kernel can take it then: with subshells (ipykernel 7 and JupyterLab 4.6 send comms on
 * one), and in ipykernel 7.4's async cells, which %%agent cells become. On an older kernel
 * without subshells the message would wait for the cell to end, so a foreground turn is
 * cancelled by interrupting the kernel instead; the magic keeps the partial reply.
 */
export function cancelRoute(agent: IAgentInfo, supportsSubshells: boolean): 'interrupt' | 'message' {
  return agent.foreground && !supportsSubshells ? 'interrupt' : 'message';
}
