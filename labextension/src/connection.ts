/**
 * The link between the panel and one notebook's kernel: registers the `agent_magics` comm
 * target (the kernel opens a comm when `%load_ext agent_magics` runs), opens a comm itself when
 * it attaches (the extension may already be loaded), and follows kernel changes and restarts.
 * The kernel publishes nothing on the comm it opened until this side answers on it: the
 * connection sends `refresh` (with the protocol version) as soon as it accepts that comm.
 */

import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';

import { PanelModel, cancelRoute } from './model';
import { Action, COMM_TARGET, IAgentInfo, PROTOCOL_VERSION, parseMessage } from './protocol';

let requestCounter = 0;

export class KernelLink {
  private _session: ISessionContext | null = null;
  private _kernel: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;

  constructor(private readonly _model: PanelModel) {}

  /** Follow another notebook's session (or none). */
  setSession(session: ISessionContext | null): void {
    if (session === this._session) {
      return;
    }
    if (this._session) {
      this._session.kernelChanged.disconnect(this._onKernelChanged, this);
      this._session.statusChanged.disconnect(this._onStatusChanged, this);
    }
    this._detach();
    this._session = session;
    if (!session) {
      this._model.setConnection('no-notebook');
      return;
    }
    session.kernelChanged.connect(this._onKernelChanged, this);
    session.statusChanged.connect(this._onStatusChanged, this);
    this._attach(session.session?.kernel ?? null);
  }

  dispose(): void {
    this.setSession(null);
  }

  get kernel(): Kernel.IKernelConnection | null {
    return this._kernel;
  }

  /** Send an action; false when there is no open comm to send it on. */
  send(action: Action): boolean {
    const comm = this._comm;
    if (!comm || comm.isDisposed) {
      return false;
    }
    comm.send(action as any);
    return true;
  }

  cancel(agent: IAgentInfo): void {
    const kernel = this._kernel;
    if (!kernel) {
      return;
    }
    if (cancelRoute(agent, kernel.supportsSubshells) === 'interrupt') {
      void kernel.interrupt();
    } else {
      this.send({ type: 'cancel', agent: agent.name, request_id: nextRequestId() });
    }
  }

  clear(agent: IAgentInfo): void {
    this.send({ type: 'clear', agent: agent.name, request_id: nextRequestId() });
  }

  private _onKernelChanged(): void {
    this._detach();
    this._attach(this._session?.session?.kernel ?? null);
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting') {
      this._dropComm();
      this._model.setConnection('restarting');
    } else if (status === 'dead') {
      this._dropComm();
      this._model.setConnection('no-kernel');
    } else if (status === 'idle' && this._model.state.connection === 'restarting') {
      // The extension may be loaded at start-up (ipython_config); ask once.
      this._open();
    }
  }

  private _attach(kernel: Kernel.IKernelConnection | null): void {
    this._kernel = kernel;
    if (!kernel) {
      this._model.setConnection('no-kernel');
      return;
    }
    kernel.registerCommTarget(COMM_TARGET, this._onCommOpen);
    this._open();
  }

  private _detach(): void {
    this._dropComm();
    if (this._kernel && !this._kernel.isDisposed) {
      this._kernel.removeCommTarget(COMM_TARGET, this._onCommOpen);
    }
    this._kernel = null;
  }

  /** Open a comm from this side; the kernel closes it when agent_magics is not loaded. */
  private _open(): void {
    const kernel = this._kernel;
    if (!kernel || kernel.isDisposed) {
      return;
    }
    this._dropComm();
    this._model.setConnection('connecting');
    const comm = kernel.createComm(COMM_TARGET);
    this._adopt(comm);
    try {
      comm.open({ type: 'refresh' });
    } catch (err) {
      console.warn('agent_magics: cannot open the comm', err);
      this._model.setConnection('no-kernel');
    }
  }

  /**
   * The kernel opened a comm (at `%load_ext agent_magics`): it replaces ours. The kernel
   * stays silent on it until we answer, so say at once that a panel listens.
   */
  private _onCommOpen = (comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg): void => {
    this._dropComm();
    this._adopt(comm);
    this._handle(msg.content.data);
    try {
      this.send({ type: 'refresh', version: PROTOCOL_VERSION });
    } catch (err) {
      console.warn('agent_magics: cannot answer the comm', err);
    }
  };

  private _adopt(comm: Kernel.IComm): void {
    this._comm = comm;
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
      if (this._comm === comm) {
        this._handle(msg.content.data);
      }
    };
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
        if (this._model.state.connection !== 'restarting') {
          this._model.setConnection('not-loaded');
        }
      }
    };
  }

  private _dropComm(): void {
    const comm = this._comm;
    this._comm = null;
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // the kernel is gone: nothing to tell it
      }
    }
  }

  private _handle(data: unknown): void {
    const message = parseMessage(data);
    if (message?.type === 'snapshot') {
      this._model.applySnapshot(message);
    } else if (message?.type === 'result') {
      this._model.applyResult(message);
    }
  }
}

function nextRequestId(): string {
  requestCounter += 1;
  return `panel-${Date.now().toString(36)}-${requestCounter}`;
}
