/**
 * agent_magics in JupyterLab: the Agents side panel (live quota and usage per agent of the
 * current notebook's kernel), %%agent cell highlighting, and an "Insert agent cell" command in
 * the palette and the notebook toolbar.
 */

import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { EditorExtensionRegistry, IEditorExtensionRegistry } from '@jupyterlab/codemirror';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { CommandToolbarButton, LabIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { IDisposable } from '@lumino/disposable';

import { agentCellExtension } from './cell';
import { KernelLink } from './connection';
import { PanelModel } from './model';
import { AgentsPanel } from './panel';

const INSERT_CELL = 'agent-magics:insert-cell';

const agentIcon = new LabIcon({
  name: 'agent-magics:agents',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161"><path d="M12 2a2 2 0 0 1 2 2c0 .74-.4 1.39-1 1.73V7h4a3 3 0 0 1 3 3v7a3 3 0 0 1-3 3H7a3 3 0 0 1-3-3v-7a3 3 0 0 1 3-3h4V5.73A2 2 0 0 1 12 2zM9 11.5A1.5 1.5 0 1 0 9 14.5 1.5 1.5 0 0 0 9 11.5zm6 0a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3zM2 11h1v5H2zm19 0h1v5h-1z"/></g></svg>'
});

async function runInNewCell(panel: NotebookPanel, source: string): Promise<void> {
  const notebook = panel.content;
  NotebookActions.insertBelow(notebook);
  notebook.activeCell?.model.sharedModel.setSource(source);
  await NotebookActions.run(notebook, panel.sessionContext);
}

function insertAgentCell(tracker: INotebookTracker): void {
  const panel = tracker.currentWidget;
  if (!panel) {
    return;
  }
  const notebook = panel.content;
  NotebookActions.insertBelow(notebook);
  const cell = notebook.activeCell;
  if (!cell) {
    return;
  }
  cell.model.sharedModel.setSource('%%agent \n');
  notebook.mode = 'edit';
  // Entering edit mode focuses the editor with the cursor at the start: place it after the
  // magic (where the agent's name goes) once the editor has settled.
  void cell.ready.then(() =>
    requestAnimationFrame(() => {
      cell.editor?.focus();
      cell.editor?.setCursorPosition({ line: 0, column: '%%agent '.length });
    })
  );
}

/** Adds the "Insert agent cell" button to every notebook's toolbar. */
class AgentCellButton implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(private readonly _commands: CommandRegistry) {}

  createNew(panel: NotebookPanel): IDisposable {
    const button = new CommandToolbarButton({ commands: this._commands, id: INSERT_CELL });
    panel.toolbar.insertAfter('cellType', 'agentMagicsInsertCell', button);
    return button;
  }
}

const panelPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agent-magics:panel',
  description: 'Agents side panel with live quota and usage, and the Insert agent cell command.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null
  ): void => {
    const model = new PanelModel();
    const link = new KernelLink(model);
    const panel = new AgentsPanel(model, {
      cancel: agent => link.cancel(agent),
      clear: agent => link.clear(agent),
      usage: agent => {
        const current = tracker.currentWidget;
        if (current) {
          void runInNewCell(current, `%agent usage ${agent.name}`);
        }
      }
    });
    panel.title.icon = agentIcon;
    app.shell.add(panel, 'right', { rank: 650 });

    const follow = (): void => link.setSession(tracker.currentWidget?.sessionContext ?? null);
    tracker.currentChanged.connect(follow);
    follow();

    app.commands.addCommand(INSERT_CELL, {
      label: 'Insert agent cell',
      caption: 'Insert a %%agent cell below the active cell',
      icon: agentIcon,
      isEnabled: () => tracker.currentWidget !== null,
      execute: () => insertAgentCell(tracker)
    });
    palette?.addItem({ command: INSERT_CELL, category: 'Notebook Operations' });
    app.docRegistry.addWidgetExtension('Notebook', new AgentCellButton(app.commands));
  }
};

const cellPlugin: JupyterFrontEndPlugin<void> = {
  id: 'agent-magics:cell-highlighting',
  description: 'Highlights the %%agent line and treats the cell body as prose.',
  autoStart: true,
  requires: [IEditorExtensionRegistry],
  activate: (_app: JupyterFrontEnd, registry: IEditorExtensionRegistry): void => {
    registry.addExtension({
      name: 'agent-magics:agent-cell',
      factory: () => EditorExtensionRegistry.createImmutableExtension(agentCellExtension())
    });
  }
};

export default [panelPlugin, cellPlugin];
