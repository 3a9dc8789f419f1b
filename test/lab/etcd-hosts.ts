// The set-up the cross-host lab tests share: etcd in a namespace of its own and N lab hosts on
// its lab underlay (each host's underlay0), joined as h1, h2, ... with a short etcd lease TTL.
// Not a test file of its own (the lab glob runs *.test.ts), and not cluster-etcd.ts either: that
// one is a test file run inside a lab host, and importing it would register its tests here.
//
// Clean up: create() removes what it made when it fails part-way; destroy() stops each host's
// ctnetd, removes every host and then etcd, past failures, and throws them together at the end.
import { EtcdLab } from '../../src/lab/etcd.ts';
import { Lab } from '../../src/lab/lab.ts';

export class EtcdHosts {
  readonly etcd: EtcdLab;
  /** Seconds: each host's etcd lease TTL (cluster join --lease-ttl). */
  readonly ttl: number;
  readonly hosts: Lab[] = [];
  /** Each host's address on the underlay, in the order of hosts. */
  readonly underlay: string[] = [];

  private constructor(etcd: EtcdLab, ttl: number) {
    this.etcd = etcd;
    this.ttl = ttl;
  }

  /** etcd and n lab hosts connected to it; none has joined yet (join, joinAll). */
  static async create(n: number, options: { ttl: number }): Promise<EtcdHosts> {
    const c = new EtcdHosts(await EtcdLab.create(), options.ttl);
    try {
      for (let i = 0; i < n; i++) {
        const lab = await Lab.create();
        c.hosts.push(lab);
        c.underlay.push((await c.etcd.connect(lab.host)).address);
      }
    } catch (e) {
      await c.destroy().catch(() => {}); // the set-up's error is the one to see
      throw e;
    }
    // For a look at a failing run while it runs (ip netns exec NAME ...).
    console.log(`# lab namespaces: ${[c.etcd.netns, ...c.hosts.flatMap((h) => [h.host, h.world])].join(' ')}`);
    return c;
  }

  /** Host i (0-based; it joins as h{i+1}). */
  host(i: number): Lab {
    const h = this.hosts[i];
    if (!h) throw new Error(`no lab host ${i}: the cluster has ${this.hosts.length}`);
    return h;
  }

  /** `cluster join` of lab host lab as name (which starts its ctnetd); its output. */
  join(lab: Lab, name: string): Promise<string> {
    return lab.ctnetOk(['cluster', 'join', '--etcd', this.etcd.url, '--underlay', 'underlay0', '--host-name', name, '--lease-ttl', String(this.ttl)]);
  }

  /** Every host joins, one after the other, as h1, h2, ... */
  async joinAll(): Promise<void> {
    for (const [i, lab] of this.hosts.entries()) await this.join(lab, `h${i + 1}`);
  }

  /** Stops each host's ctnetd, removes the hosts, then etcd; keeps going past failures. */
  async destroy(): Promise<void> {
    const errors: unknown[] = [];
    for (const lab of this.hosts) {
      // A clean stop first (a no-op where none runs); destroy kills whatever is left in the namespace.
      await lab.ctnet(['daemon', 'stop']).catch((e: unknown) => errors.push(e));
      await lab.destroy().catch((e: unknown) => errors.push(e));
    }
    await this.etcd.destroy().catch((e: unknown) => errors.push(e));
    if (errors.length) throw new AggregateError(errors, `cluster lab teardown: ${errors.length} step(s) failed`);
  }
}
