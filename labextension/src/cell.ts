/**
 * %%agent cells in the editor: the magic line is highlighted as a magic, the body is prose
 * (Python highlighting switched off by a line class), and {name} interpolations stand out.
 */

import { Extension, RangeSetBuilder } from '@codemirror/state';
import { Decoration, DecorationSet, EditorView, ViewPlugin, ViewUpdate } from '@codemirror/view';

export const AGENT_CELL = /^%%agent(\s|$)/;
const INTERPOLATION = /(?<!\{)\{[A-Za-z_][\w.]*(\[[^\]\n]*\])*\}(?!\})/g;

const magicLine = Decoration.line({ class: 'cm-agentMagic-line' });
const proseLine = Decoration.line({ class: 'cm-agentProse' });
const interpolation = Decoration.mark({ class: 'cm-agentInterpolation' });

/** Ranges to decorate, as plain data so the logic is testable without an editor. */
export function agentCellRanges(
  text: string
): { magic: boolean; prose: number[]; interpolations: [number, number][] } {
  if (!AGENT_CELL.test(text)) {
    return { magic: false, prose: [], interpolations: [] };
  }
  const prose: number[] = [];
  const interpolations: [number, number][] = [];
  let offset = 0;
  text.split('\n').forEach((line, index) => {
    if (index > 0) {
      prose.push(offset);
      for (const match of line.matchAll(INTERPOLATION)) {
        const start = offset + (match.index ?? 0);
        interpolations.push([start, start + match[0].length]);
      }
    }
    offset += line.length + 1;
  });
  return { magic: true, prose, interpolations };
}

function build(view: EditorView): DecorationSet {
  const builder = new RangeSetBuilder<Decoration>();
  const ranges = agentCellRanges(view.state.doc.toString());
  if (!ranges.magic) {
    return Decoration.none;
  }
  builder.add(0, 0, magicLine);
  // Line decorations and marks must be added in document order.
  let i = 0;
  for (const lineStart of ranges.prose) {
    builder.add(lineStart, lineStart, proseLine);
    const lineEnd = view.state.doc.lineAt(lineStart).to;
    while (i < ranges.interpolations.length && ranges.interpolations[i][0] <= lineEnd) {
      const [from, to] = ranges.interpolations[i++];
      builder.add(from, to, interpolation);
    }
  }
  return builder.finish();
}

export function agentCellExtension(): Extension {
  return ViewPlugin.fromClass(
    class {
      decorations: DecorationSet;
      constructor(view: EditorView) {
        this.decorations = build(view);
      }
      update(update: ViewUpdate): void {
        if (update.docChanged) {
          this.decorations = build(update.view);
        }
      }
    },
    { decorations: plugin => plugin.decorations }
  );
}
