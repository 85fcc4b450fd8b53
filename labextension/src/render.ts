/**
 * Renders the panel state as plain DOM (no framework): small, fast to redraw once a second for
 * countdowns, and testable under jsdom. Elements carry data-testid attributes for tests.
 */

import { IAgentInfo, IQuotaInfo } from './protocol';
import { PanelModel, emptyMessage, formatCount, formatSeconds, isBusy, statusText } from './model';

export interface IActions {
  cancel(agent: IAgentInfo): void;
  clear(agent: IAgentInfo): void;
  usage(agent: IAgentInfo): void;
}

function el<K extends keyof HTMLElementTagNameMap>(
  doc: Document,
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = doc.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function button(doc: Document, label: string, title: string, onClick: () => void): HTMLButtonElement {
  const node = el(doc, 'button', 'jp-AgentMagics-action jp-mod-styled', label);
  node.type = 'button';
  node.title = title;
  node.dataset.action = label.toLowerCase();
  node.addEventListener('click', onClick);
  return node;
}

function renderAgent(doc: Document, model: PanelModel, agent: IAgentInfo, actions: IActions): HTMLElement {
  const card = el(doc, 'div', `jp-AgentMagics-agent jp-AgentMagics-status-${agent.status}`);
  card.dataset.testid = 'agent';
  card.dataset.agent = agent.name;
  card.dataset.status = agent.status;

  const head = el(doc, 'div', 'jp-AgentMagics-agentHead');
  head.append(el(doc, 'span', 'jp-AgentMagics-name', agent.name));
  head.append(el(doc, 'span', 'jp-AgentMagics-model', agent.model));
  card.append(head);

  const status = el(doc, 'div', 'jp-AgentMagics-statusLine', statusText(agent, model.agentWait(agent)));
  status.dataset.testid = 'status';
  card.append(status);

  const stats = el(doc, 'div', 'jp-AgentMagics-stats');
  stats.dataset.testid = 'tokens';
  stats.textContent =
    `${agent.turns} turn${agent.turns === 1 ? '' : 's'} · ` +
    `${formatCount(agent.input_tokens)} in · ${formatCount(agent.output_tokens)} out`;
  card.append(stats);

  if (agent.error) {
    const error = el(doc, 'div', 'jp-AgentMagics-error', agent.error);
    error.dataset.testid = 'error';
    card.append(error);
  }

  const bar = el(doc, 'div', 'jp-AgentMagics-actions');
  if (isBusy(agent)) {
    bar.append(
      button(doc, 'Cancel', agent.foreground ? 'Interrupt the running cell' : 'Cancel this turn', () =>
        actions.cancel(agent)
      )
    );
  } else {
    bar.append(button(doc, 'Clear', 'Clear this agent\u2019s history', () => actions.clear(agent)));
  }
  bar.append(button(doc, 'Usage', 'Open %agent usage in a new cell', () => actions.usage(agent)));
  card.append(bar);
  return card;
}

function renderQuota(doc: Document, model: PanelModel, quota: IQuotaInfo): HTMLElement {
  const row = el(doc, 'div', `jp-AgentMagics-key jp-AgentMagics-key-${quota.status}`);
  row.dataset.testid = 'quota';
  row.dataset.key = quota.key;
  const left = model.quotaWait(quota);
  const parts = [quota.key || 'no API key'];
  parts.push(left > 0 ? `backing off · ${formatSeconds(left)}` : 'ok');
  parts.push(`${quota.total_hits} rate-limit hit${quota.total_hits === 1 ? '' : 's'}`);
  if (quota.total_wait_s > 0) {
    parts.push(`waited ${formatSeconds(quota.total_wait_s)}`);
  }
  if (quota.rpm !== null) {
    parts.push(`${quota.rpm} rpm`);
  }
  if (quota.tpm !== null) {
    parts.push(`${formatCount(quota.tokens_last_minute)}/${formatCount(quota.tpm)} tpm`);
  }
  row.textContent = parts.join(' · ');
  row.title = `Agents on this key: ${quota.agents.join(', ') || 'none'}`;
  return row;
}

/** Replace ``root``'s content with the current state. */
export function render(root: HTMLElement, model: PanelModel, actions: IActions): void {
  const doc = root.ownerDocument;
  const state = model.state;
  const parts: HTMLElement[] = [];

  const title = el(doc, 'div', 'jp-AgentMagics-title', 'Agents');
  parts.push(title);

  const empty = emptyMessage(state);
  if (empty !== null) {
    const node = el(doc, 'div', 'jp-AgentMagics-empty', empty);
    node.dataset.testid = 'empty';
    node.dataset.connection = state.connection;
    parts.push(node);
  }
  const snapshot = state.connection === 'connected' ? state.snapshot : null;
  if (snapshot) {
    const list = el(doc, 'div', 'jp-AgentMagics-agents');
    for (const agent of snapshot.agents) {
      list.append(renderAgent(doc, model, agent, actions));
    }
    parts.push(list);
    if (snapshot.quota.length > 0) {
      parts.push(el(doc, 'div', 'jp-AgentMagics-subtitle', 'API keys'));
      const keys = el(doc, 'div', 'jp-AgentMagics-keys');
      for (const quota of snapshot.quota) {
        keys.append(renderQuota(doc, model, quota));
      }
      parts.push(keys);
    }
  }
  if (state.notice) {
    const notice = el(
      doc,
      'div',
      `jp-AgentMagics-notice ${state.notice.ok ? '' : 'jp-mod-error'}`,
      state.notice.message
    );
    notice.dataset.testid = 'notice';
    parts.push(notice);
  }
  root.replaceChildren(...parts);
}
