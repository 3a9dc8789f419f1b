// systemd-resolved: where it serves ctnet's network namespace (kernel/resolved.ts), a network with
// DNS registers its bridge with it, the gateways as the link's DNS servers and ~NETWORK as its
// routing-only domain, so the host itself resolves NAME.NETWORK (`ping web.front` on the host),
// and nothing else goes to ctnetd (not a default route). As typed operations with inverses, through
// the applier: `network create` registers, `network rm` reverts (resolved would forget the link
// when it goes anyway), `ctnet gc` registers again what resolved lost (it restarted, someone ran
// `resolvectl revert`), `ctnet doctor` says whether it is in place.
import { step, type Step } from '../plan/plan.ts';
import type { NetworkRow } from '../store/store.ts';
import type { Ctx } from './context.ts';
import type { Finding } from './doctor.ts';

/** Networks that register: DNS on and a bridge on the host path (a macvlan/ipvlan network has none). */
const registers = (n: { readonly dns: boolean; readonly lower?: unknown }) => n.dns && !n.lower;

type Gateways = readonly { readonly family: 4 | 6; readonly gateway: string }[];

/** The link settings network n should have in resolved: its gateways, IPv4 first. */
function wanted(n: Pick<NetworkRow, 'name' | 'bridge'>, gws: Gateways): { dev: string; dns: string[]; domain: string } {
  const dns = [...gws.filter((g) => g.family === 4), ...gws.filter((g) => g.family === 6)].map((g) => g.gateway);
  return { dev: n.bridge, dns, domain: n.name };
}

/** The step that registers network n (with these subnets' gateways) with resolved; none when resolved does not serve here. */
export function resolvedSteps(n: Pick<NetworkRow, 'name' | 'bridge' | 'dns'> & { readonly lower?: unknown }, gws: Gateways, here: boolean): Step[] {
  if (!here || !registers(n)) return [];
  const w = wanted(n, gws);
  if (w.dns.length === 0) return [];
  return [step([{ kind: 'resolved.link', ...w }], `systemd-resolved: ${w.domain}'s names on ${w.dev} (${w.dns.join(', ')})`)];
}

/** The step that forgets network n's link in resolved (before its bridge goes). */
export function resolvedRevertSteps(n: NetworkRow, here: boolean): Step[] {
  return here && registers(n) ? [step([{ kind: 'resolved.revert', dev: n.bridge }])] : [];
}

/** What differs between resolved's view of network n's link and what it should hold; undefined when in place. */
async function drift(ctx: Ctx, n: NetworkRow): Promise<string | undefined> {
  const w = wanted(n, ctx.store.subnets(n.name));
  const have = await ctx.kernel.resolvedLink(w.dev);
  if (!have) return `bridge ${w.dev} is not known to systemd-resolved`;
  const missing = w.dns.filter((d) => !have.dns.includes(d));
  if (missing.length) return `${w.dev} lacks DNS server${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`;
  if (!have.domains.includes(`~${w.domain}`)) return `${w.dev} lacks the domain ~${w.domain}`;
  return undefined;
}

/** gc: registers again every network whose link resolved lost or changed. */
export async function repairResolved(ctx: Ctx): Promise<string[]> {
  if (!(await ctx.kernel.resolvedHere())) return [];
  const done: string[] = [];
  for (const n of ctx.store.networks().filter((x) => x.state === 'ready' && registers(x))) {
    const why = await drift(ctx, n);
    if (!why) continue;
    await ctx.applier.apply(resolvedSteps(n, ctx.store.subnets(n.name), true));
    done.push(`registered network ${n.name} with systemd-resolved again (${why})`);
  }
  return done;
}

/** doctor: whether the host resolves NAME.NETWORK through systemd-resolved. */
export async function resolvedFindings(ctx: Ctx): Promise<Finding[]> {
  const named = ctx.store.networks().filter((n) => n.state === 'ready' && registers(n));
  if (named.length === 0) return [];
  if (!(await ctx.kernel.resolvedHere())) {
    return [{
      check: 'resolved', status: 'ok',
      detail: 'systemd-resolved does not serve this network namespace: the host resolves sandbox names only by asking a gateway (dig @GATEWAY NAME)',
    }];
  }
  const off: string[] = [];
  for (const n of named) {
    const why = await drift(ctx, n);
    if (why) off.push(`${n.name}: ${why}`);
  }
  return off.length
    ? [{ check: 'resolved', status: 'warn', detail: `systemd-resolved does not route every network's names to ctnetd: ${off.join('; ')}`, hint: 'run "ctnet gc" to register them again' }]
    : [{ check: 'resolved', status: 'ok', detail: `systemd-resolved sends NAME.NETWORK to ctnetd for ${named.map((n) => n.name).join(', ')}` }];
}
