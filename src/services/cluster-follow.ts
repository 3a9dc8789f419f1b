// The part of a ctnetd service that follows the cluster (the sandbox directory, the service
// directory, the trace responder): follow one etcd prefix of the cluster this host is a member of
// (list, then watch; after a break, list again: cluster/etcd.ts follow()), and follow the
// membership itself as it changes (join, leave, rejoin elsewhere). A service that keeps etcd and
// its store in step also gets rounds: one at a time, a kick during a round runs one more after it,
// and a failed round is tried again every RETRY_MS, its error logged once until it changes.
//
// The three services each carried a copy of this; what differs between them is passed in.
import { follow as followPrefix, type EtcdClient, type Follower, type FollowHandlers } from '../cluster/etcd.ts';
import { etcdOf } from '../engine/cluster.ts';
import type { MemberRow } from '../store/store.ts';
import type { ServiceContext } from './service.ts';

/** After a failed round, try again this often (the cluster agent's own retry interval). */
export const RETRY_MS = 1_000;

/** The cluster followed: of which cluster (endpoints), as which host. */
export interface Following {
  /** HOST@ENDPOINTS: a different key is a different membership. */
  readonly key: string;
  readonly self: string;
  readonly etcd: EtcdClient;
  /** Whether this is still the membership followed (a late callback of an old one must do nothing). */
  current(): boolean;
}

export interface Rounds {
  /** One round; false when it could not compare yet (not listed, not registered): no "works again". */
  run(f: Following | undefined): Promise<boolean>;
  /** What a failed round's error says (the same text is logged once). */
  why(e: Error): string;
  /** The line logged when a round fails with a new reason. */
  failed(why: string): string;
  /** The line logged when a round succeeds after failures. */
  recovered: string;
}

export interface ClusterFollowOptions {
  readonly ctx: () => ServiceContext | undefined;
  /** The etcd prefix to follow, as this host. */
  readonly prefix: (self: string) => string;
  /** The follower's handlers for one membership. */
  readonly handlers: (f: Following) => FollowHandlers;
  /** The membership changed: the old one's follower is stopped; forget what it said. */
  readonly reset: () => void;
  /** After reset, when this host is not in a cluster (any more). */
  readonly left?: (c: ServiceContext) => Promise<void>;
  readonly rounds?: Rounds;
}

export interface ClusterFollow {
  /** The membership followed now, if any. */
  readonly current: Following | undefined;
  /** Follows the membership the store holds now (one check at a time: start, a member event and a resync may ask together). */
  membership(): Promise<void>;
  /** Runs a round now, or right after the one under way. */
  kick(): void;
  /** Lists again now (e.g. etcd answers again: what changed while it did not). */
  restart(): void;
  /** Stops the follower and the retries; waits for a round under way. */
  stop(): Promise<void>;
}

/** What followCluster needs from outside; tests pass a fake follow. */
export interface ClusterFollowDeps {
  readonly follow: (etcd: EtcdClient, prefix: string, h: FollowHandlers) => Follower;
  readonly etcdOf: (m: MemberRow) => EtcdClient;
}

export function followCluster(o: ClusterFollowOptions, deps: ClusterFollowDeps = { follow: followPrefix, etcdOf }): ClusterFollow {
  let following: { readonly at: Following; readonly f: Follower } | undefined;
  let stopped = false;
  let running: Promise<void> | undefined;
  let again = false;
  let retry: NodeJS.Timeout | undefined;
  /** What the last failed round said (logged once until it changes). */
  let failing: string | undefined;
  const log = (m: string) => o.ctx()?.log(m);

  function kick(): void {
    const r = o.rounds;
    if (stopped || !r) return;
    if (running) {
      again = true;
      return;
    }
    clearTimeout(retry);
    running = r.run(following?.at)
      .then((done) => {
        if (!done || !failing) return;
        log(r.recovered);
        failing = undefined;
      })
      .catch((e: Error) => {
        const why = r.why(e);
        if (why !== failing) log(r.failed(why));
        failing = why;
        if (!stopped) retry = setTimeout(kick, RETRY_MS);
      })
      .finally(() => {
        running = undefined;
        if (again) {
          again = false;
          kick();
        }
      });
  }

  async function followMembership(): Promise<void> {
    if (stopped) return;
    const c = o.ctx()!;
    const m = await c.exclusive(async (e) => e.store.member());
    // Stopped while the store was read: a follower started now would never be stopped.
    if (stopped) return;
    const key = m && m.state === 'ready' ? `${m.host}@${m.endpoints.join(',')}` : undefined;
    if (following?.at.key === key) return;
    const old = following;
    following = undefined;
    await old?.f.stop();
    o.reset();
    if (!key || !m) {
      await o.left?.(c);
      return;
    }
    if (stopped) return; // stopped while the old follower stopped
    const self = m.host;
    const etcd = deps.etcdOf(m);
    const mine: Following = { key, self, etcd, current: () => following?.at === mine };
    following = { at: mine, f: deps.follow(etcd, o.prefix(self), o.handlers(mine)) };
  }

  let chain: Promise<void> = Promise.resolve();
  return {
    get current() {
      return following?.at;
    },
    membership: () => (chain = chain.catch(() => {}).then(followMembership)),
    kick,
    restart() {
      following?.f.restart();
    },
    async stop() {
      stopped = true;
      clearTimeout(retry);
      // A membership check under way ends without starting a follower (it looks at stopped).
      await chain.catch(() => {});
      await following?.f.stop();
      await running;
    },
  };
}
