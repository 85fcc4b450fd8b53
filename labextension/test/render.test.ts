// @vitest-environment jsdom
import { describe, expect, it, vi } from 'vitest';

import { PanelModel } from '../src/model';
import { render } from '../src/render';
import { Clock, agent, quota, snapshot } from './fixtures';

function setup() {
  const clock = new Clock();
  const model = new PanelModel(clock.now);
  const actions = { cancel: vi.fn(), clear: vi.fn(), usage: vi.fn() };
  const root = document.createElement('div');
  return { clock, model, actions, root };
}

describe('render', () => {
  it('shows the empty state when agent_magics is not loaded', () => {
    const { model, actions, root } = setup();
    model.setConnection('not-loaded');
    render(root, model, actions);
    const empty = root.querySelector('[data-testid="empty"]');
    expect(empty?.textContent).toContain('%load_ext agent_magics');
    expect(root.querySelector('[data-testid="agent"]')).toBeNull();
  });

  it('shows each agent with status, countdown, tokens and key state', () => {
    const { clock, model, actions, root } = setup();
    model.applySnapshot(
      snapshot(
        1,
        [
          agent({ name: 'writer', status: 'waiting', wait_remaining_s: 3, attempt: 2, turns: 1 }),
          agent({ name: 'reader', turns: 2, input_tokens: 1200, output_tokens: 345 })
        ],
        [quota({ status: 'backing_off', backoff_remaining_s: 3, total_hits: 1, agents: ['writer', 'reader'] })]
      )
    );
    render(root, model, actions);
    const cards = root.querySelectorAll<HTMLElement>('[data-testid="agent"]');
    expect([...cards].map(c => c.dataset.agent)).toEqual(['writer', 'reader']);
    expect(cards[0].querySelector('[data-testid="status"]')?.textContent).toBe(
      'waiting for quota · 3s · attempt 2/6'
    );
    expect(cards[1].querySelector('[data-testid="tokens"]')?.textContent).toBe(
      '2 turns · 1,200 in · 345 out'
    );
    const key = root.querySelector('[data-testid="quota"]');
    expect(key?.textContent).toBe('key-3f9a · backing off · 3s · 1 rate-limit hit');
    clock.advance(2100);
    render(root, model, actions);
    expect(root.querySelector('[data-testid="status"]')?.textContent).toBe(
      'waiting for quota · 1s · attempt 2/6'
    );
  });

  it('offers Cancel while busy, Clear when idle, and Usage always', () => {
    const { model, actions, root } = setup();
    const busy = agent({ name: 'busy', status: 'streaming' });
    const idle = agent({ name: 'idle' });
    model.applySnapshot(snapshot(1, [busy, idle]));
    render(root, model, actions);
    const [busyCard, idleCard] = root.querySelectorAll<HTMLElement>('[data-testid="agent"]');
    busyCard.querySelector<HTMLButtonElement>('[data-action="cancel"]')?.click();
    idleCard.querySelector<HTMLButtonElement>('[data-action="clear"]')?.click();
    idleCard.querySelector<HTMLButtonElement>('[data-action="usage"]')?.click();
    expect(busyCard.querySelector('[data-action="clear"]')).toBeNull();
    expect(actions.cancel).toHaveBeenCalledWith(busy);
    expect(actions.clear).toHaveBeenCalledWith(idle);
    expect(actions.usage).toHaveBeenCalledWith(idle);
  });

  it('shows the last error as text, never as markup', () => {
    const { model, actions, root } = setup();
    model.applySnapshot(snapshot(1, [agent({ status: 'error', error: '<b>quota</b> exhausted' })]));
    render(root, model, actions);
    const error = root.querySelector('[data-testid="error"]');
    expect(error?.textContent).toBe('<b>quota</b> exhausted');
    expect(error?.querySelector('b')).toBeNull();
  });
});

describe('keys', () => {
  it('names keyless runtimes instead of showing an empty fingerprint', () => {
    const { model, actions, root } = setup();
    model.applySnapshot(snapshot(1, [agent({ key: '' })], [quota({ key: '' })]));
    render(root, model, actions);
    expect(root.querySelector('[data-testid="quota"]')?.textContent).toBe('no API key · ok · 0 rate-limit hits');
  });
});
