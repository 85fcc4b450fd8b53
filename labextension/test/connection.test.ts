import { describe, expect, it } from 'vitest';

import { KernelLink } from '../src/connection';
import { PanelModel } from '../src/model';
import { COMM_TARGET, PROTOCOL_VERSION } from '../src/protocol';
import { agent, snapshot } from './fixtures';

/** A comm that records what the panel sends; `deliver` plays a kernel message. */
class FakeComm {
  sent: unknown[] = [];
  opened: unknown[] = [];
  isDisposed = false;
  onMsg: ((msg: any) => void) | null = null;
  onClose: ((msg: any) => void) | null = null;

  constructor(readonly commId: string) {}

  open(data: unknown): void {
    this.opened.push(data);
  }

  send(data: unknown): void {
    this.sent.push(data);
  }

  close(): void {
    this.isDisposed = true;
  }

  deliver(data: unknown): void {
    this.onMsg?.({ content: { comm_id: this.commId, data } });
  }
}

class FakeKernel {
  isDisposed = false;
  supportsSubshells = false;
  targets = new Map<string, (comm: any, msg: any) => void>();
  created: FakeComm[] = [];

  registerCommTarget(name: string, callback: (comm: any, msg: any) => void): void {
    this.targets.set(name, callback);
  }

  removeCommTarget(name: string): void {
    this.targets.delete(name);
  }

  createComm(): FakeComm {
    const comm = new FakeComm(`frontend-${this.created.length}`);
    this.created.push(comm);
    return comm;
  }

  /** The kernel opens a comm, as `%load_ext agent_magics` does. */
  openComm(id: string): FakeComm {
    const comm = new FakeComm(id);
    const msg = { content: { comm_id: id, target_name: COMM_TARGET, data: { version: 1 } } };
    this.targets.get(COMM_TARGET)!(comm, msg);
    return comm;
  }

  interrupt(): Promise<void> {
    return Promise.resolve();
  }
}

class FakeSignal {
  slots: Array<[(...args: any[]) => void, unknown]> = [];
  connect(slot: (...args: any[]) => void, thisArg: unknown): void {
    this.slots.push([slot, thisArg]);
  }
  disconnect(slot: (...args: any[]) => void): void {
    this.slots = this.slots.filter(([s]) => s !== slot);
  }
  emit(sender: unknown, value: unknown): void {
    for (const [slot, thisArg] of this.slots) {
      slot.call(thisArg, sender, value);
    }
  }
}

function setup() {
  const kernel = new FakeKernel();
  const session = {
    session: { kernel },
    kernelChanged: new FakeSignal(),
    statusChanged: new FakeSignal()
  };
  const model = new PanelModel(() => 0);
  const link = new KernelLink(model);
  link.setSession(session as any);
  return { kernel, session, model, link };
}

const HELLO = { type: 'refresh', version: PROTOCOL_VERSION };

describe('KernelLink', () => {
  it('opens its own comm asking for a snapshot when it attaches', () => {
    const { kernel, model } = setup();
    expect(kernel.targets.has(COMM_TARGET)).toBe(true);
    expect(kernel.created).toHaveLength(1);
    expect(kernel.created[0].opened).toEqual([{ type: 'refresh' }]);
    expect(model.state.connection).toBe('connecting');
  });

  it('answers a comm the kernel opens at once, so the kernel starts publishing', () => {
    const { kernel, model } = setup();
    const ours = kernel.created[0];
    ours.onClose?.({}); // no agent_magics in the kernel yet: it refused our comm
    expect(model.state.connection).toBe('not-loaded');
    const theirs = kernel.openComm('kernel-1');
    expect(theirs.sent).toEqual([HELLO]); // sent before any snapshot arrived
    theirs.deliver(snapshot(1, [agent()]));
    expect(model.state.connection).toBe('connected');
    expect(model.state.snapshot?.agents.map(a => a.name)).toEqual(['analyst']);
    expect(theirs.sent).toEqual([HELLO]); // once, not per snapshot
  });

  it('answers again after a restart, when the kernel loads the extension anew', () => {
    const { kernel, session, model } = setup();
    kernel.openComm('kernel-1').deliver(snapshot(1, [agent()]));
    session.statusChanged.emit(session, 'restarting');
    expect(model.state.connection).toBe('restarting');
    session.statusChanged.emit(session, 'idle');
    const reopened = kernel.created[kernel.created.length - 1];
    expect(kernel.created).toHaveLength(2);
    expect(reopened.opened).toEqual([{ type: 'refresh' }]);
    const again = kernel.openComm('kernel-2');
    expect(again.sent).toEqual([HELLO]);
    expect(reopened.isDisposed).toBe(true); // the kernel's comm replaces ours
  });

  it('answers the comm of a kernel it switches to', () => {
    const { kernel, session } = setup();
    const other = new FakeKernel();
    session.session.kernel = other as any;
    session.kernelChanged.emit(session, {});
    expect(kernel.targets.has(COMM_TARGET)).toBe(false);
    expect(other.created).toHaveLength(1);
    expect(other.openComm('kernel-3').sent).toEqual([HELLO]);
  });
});
