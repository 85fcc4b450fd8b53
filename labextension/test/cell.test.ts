import { describe, expect, it } from 'vitest';

import { agentCellRanges } from '../src/cell';

describe('agentCellRanges', () => {
  it('marks the magic line and treats every later line as prose', () => {
    const text = "%%agent analyst -m openai:gpt-4o\nSummarise {df.shape[0]} rows.\nDon't guess.";
    const ranges = agentCellRanges(text);
    expect(ranges.magic).toBe(true);
    expect(ranges.prose).toEqual([33, 63]);
    expect(ranges.interpolations.map(([a, b]) => text.slice(a, b))).toEqual(['{df.shape[0]}']);
  });

  it('leaves other cells alone, including %%agentx and line magics', () => {
    expect(agentCellRanges('print(1)').magic).toBe(false);
    expect(agentCellRanges('%%agentx\nhi').magic).toBe(false);
    expect(agentCellRanges('%agent usage').magic).toBe(false);
    expect(agentCellRanges('%%agent').magic).toBe(true);
  });

  it('does not mark escaped braces or JSON', () => {
    const text = '%%agent\nReturn {{"a": 1}} and {"b": 2} for {name}';
    const found = agentCellRanges(text).interpolations.map(([a, b]) => text.slice(a, b));
    expect(found).toEqual(['{name}']);
  });
});
