import { parseTraceTarget, trace, type TraceResult, type TraceStep } from '../../engine/trace.ts';
import { invalid } from '../../errors.ts';
import { parseName } from '../../model/names.ts';
import { defineCommand } from '../command.ts';

// Rules that only mark and go on (verdict continue) are in --json; the text shows what decided.
const shown = (steps: readonly TraceStep[]) => steps.filter((s) => s.verdict !== 'continue');
const stepLine = (s: TraceStep, policy?: TraceResult['policy']) =>
  `    ${s.table} ${s.chain}: ${s.rule}${policy && s.rule.startsWith('policy:') ? ` [${policy.by}]` : ''} -> ${s.verdict}${s.owner === 'foreign' ? '   (NOT ctnet\'s table)' : ''}`;

function render(r: TraceResult): string {
  const to = `${r.dst.address}${r.dst.port ? `:${r.dst.port}` : ''}/${r.dst.proto}`;
  const from = r.src.netns ? `${r.src.sandbox} (netns ${r.src.netns})` : r.src.sandbox;
  const out = [
    `trace ${from} (${r.src.address}:${r.sport}) -> ${r.dst.name === r.dst.address ? to : `${r.dst.name} (${to})`}`,
    `  route in ${from}: ${r.route.type && r.route.type !== 'unicast' ? `${r.route.type} ` : ''}${r.dst.address}${r.route.gateway ? ` via ${r.route.gateway}` : ''}${r.route.dev ? ` dev ${r.route.dev}` : ''}`,
    '  the first packet on this host:',
    ...(r.request.length ? shown(r.request).map((s) => stepLine(s, r.policy)) : ['    (no table saw it: it did not reach this host\'s netfilter)']),
  ];
  if (r.nat.length) out.push('  NAT:', ...r.nat.map((n) => `    ${n}`));
  if (r.reply.length) out.push('  the answer:', ...shown(r.reply).map((s) => stepLine(s, r.policy)));
  if (r.seenByServer) out.push(`  the server (${r.seenByServer.server}) saw the client as ${r.seenByServer.client}`);
  if (r.remote && 'error' in r.remote) out.push(`  on host ${r.remote.host}: not traced (${r.remote.error})`);
  else if (r.remote) {
    const h = r.remote;
    out.push(`  on host ${h.host}${h.sandbox ? ` (sandbox ${h.sandbox})` : ''}, the first packet:`,
      ...(h.request.length ? shown(h.request).map((s) => stepLine(s, h.policy)) : ['    (no table there saw it)']));
    if (h.reply.length) out.push(`  on host ${h.host}, the answer:`, ...shown(h.reply).map((s) => stepLine(s, h.policy)));
    out.push(`  on host ${h.host}: ${h.outcome}${h.droppedBy ? ` by ${h.droppedBy.table} ${h.droppedBy.chain}: ${h.droppedBy.rule}${h.policy && h.droppedBy.rule.startsWith('policy:') ? ` [${h.policy.by}]` : ''}` : ''}`);
    if (h.policy) out.push(`  ctnet policy on host ${h.host}: ${h.policy.allowed ? 'allowed' : 'denied'} by ${h.policy.by}`);
  }
  const dropPolicy = r.droppedBy?.host && r.remote && !('error' in r.remote) ? r.remote.policy : r.policy;
  const why = r.droppedBy ? ` by ${r.droppedBy.host ? `host ${r.droppedBy.host}'s ` : ''}${r.droppedBy.table} ${r.droppedBy.chain}: ${r.droppedBy.rule}${dropPolicy && r.droppedBy.rule.startsWith('policy:') ? ` [${dropPolicy.by}]` : ''}${r.droppedBy.owner === 'foreign' ? ' (another program\'s table, not ctnet\'s)' : ''}` : '';
  out.push(`  outcome: ${r.outcome}${r.outcome === 'dropped' ? why : ''}${r.outcome === 'refused' ? ' (nothing listens there, or a reject)' : ''}`);
  if (r.policy) out.push(`  ctnet policy${r.remote ? ' on this host' : ''}: ${r.policy.allowed ? 'allowed' : 'denied'} by ${r.policy.by}`);
  for (const n of r.notes ?? []) out.push(`  note: ${n}`);
  return out.join('\n');
}

export default defineCommand({
  name: 'trace',
  summary: 'why can (or can\'t) SRC (a sandbox, host, or world) reach DST[:PORT][/tcp|/udp|/icmp]? a real probe, traced through every nftables chain',
  args: ['<src>', '<dst>'],
  options: [
    { flags: '--timeout <ms>', description: 'how long the probe waits for an answer', default: '2000' },
    { flags: '--peer-wait <ms>', description: 'DST on another host: how long to wait for that host\'s ctnetd, before the probe and for its half after (it answers as soon as it can)', default: '5000' },
    { flags: '--from-netns <name>', description: 'SRC world: the network namespace the probe leaves from (one whose packets reach this host from outside)' },
  ],
  json: true,
  async run({ ctx, args, opts, io }) {
    const timeoutMs = Number(opts.timeout);
    const peerWaitMs = Number(opts.peerWait);
    if (!Number.isInteger(peerWaitMs) || peerWaitMs < 100 || peerWaitMs > 60_000) throw invalid(`--peer-wait ${JSON.stringify(opts.peerWait)} is not a number of ms in 100..60000`);
    const src = args.src === 'world' || args.src === 'host' ? args.src : parseName('sandbox', args.src);
    const r = await trace(ctx, src, parseTraceTarget(args.dst), { timeoutMs: Number.isFinite(timeoutMs) ? timeoutMs : 2000, peerWaitMs, exitOnSignal: true, ...(opts.fromNetns !== undefined ? { fromNetns: opts.fromNetns } : {}) });
    io.out(io.json ? JSON.stringify(r, null, 2) : render(r));
  },
});
