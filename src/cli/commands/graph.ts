import { buildGraph } from '../../engine/graph.ts';
import { invalid } from '../../errors.ts';
import { parseName } from '../../model/names.ts';
import { graphDot, graphText } from '../graph.ts';
import { defineCommand } from '../command.ts';

const FORMATS = ['text', 'json', 'dot', 'svg'] as const;

export default defineCommand({
  name: 'graph',
  summary: 'the live topology: networks, sandboxes, interfaces, ports and policy edges (text, json, dot, svg)',
  options: [
    { flags: '--format <format>', description: `${FORMATS.join(', ')} (svg is laid out in-process: no Graphviz needed)`, default: 'text' },
    { flags: '--network <name>', description: 'only this network, its sandboxes and the rules between them' },
  ],
  json: true,
  async run({ ctx, opts, io }) {
    const format = io.json ? 'json' : opts.format;
    if (!(FORMATS as readonly string[]).includes(format)) throw invalid(`--format ${JSON.stringify(format)} is not a graph format`, `use ${FORMATS.join(', ')}`);
    const g = await buildGraph(ctx, { network: opts.network === undefined ? undefined : parseName('network', opts.network) });
    if (format === 'json') return void io.out(JSON.stringify(g, null, 2));
    if (format === 'text') return void io.out(graphText(g));
    const dot = graphDot(g);
    if (format === 'dot') return void io.out(dot);
    // Loaded only here: Graphviz in WebAssembly is large, and no other command needs it.
    const { instance } = await import('@viz-js/viz');
    io.out((await instance()).renderString(dot, { format: 'svg' }));
  },
});
