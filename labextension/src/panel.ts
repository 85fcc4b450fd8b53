/**
 * The Agents side panel: a Lumino widget that redraws from the model on every change, and once
 * a second while a countdown runs.
 */

import { Widget } from '@lumino/widgets';

import { PanelModel, isBusy } from './model';
import { IActions, render } from './render';

export class AgentsPanel extends Widget {
  private _timer: number | null = null;
  private _unsubscribe: () => void;

  constructor(
    readonly model: PanelModel,
    private readonly _actions: IActions
  ) {
    super();
    this.id = 'agent-magics-panel';
    this.addClass('jp-AgentMagics');
    this.title.caption = 'Agents';
    this._unsubscribe = model.subscribe(() => this.update());
    this.update();
  }

  protected onUpdateRequest(): void {
    render(this.node, this.model, this._actions);
    this._tickWhileCounting();
  }

  dispose(): void {
    this._unsubscribe();
    this._stopTimer();
    super.dispose();
  }

  /** Redraw each second only while some countdown or busy state is on screen. */
  private _tickWhileCounting(): void {
    const snapshot = this.model.state.snapshot;
    const live =
      this.model.state.connection === 'connected' &&
      !!snapshot &&
      (snapshot.agents.some(isBusy) || snapshot.quota.some(q => q.status === 'backing_off'));
    if (live && this._timer === null) {
      this._timer = window.setInterval(() => this.update(), 1000);
    } else if (!live) {
      this._stopTimer();
    }
  }

  private _stopTimer(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
  }
}
