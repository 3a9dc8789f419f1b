// podman's own networking tests (podman 4.3.1's test/system/500-networking.bats, unmodified, from
// ../shared/tools/podman-system-tests) with ctnet as podman's default network ("podman") and as
// every network the tests create. bats, podman, conmon, the containers and ctnet all live in one
// lab host (test/lab/podman.ts keeps podman's storage and config private). What the tests need
// from the machine is made in the lab:
// - the test image (quay.io/libpod/testimage:20220615) is busybox-static plus test/lab/nc.c as
//   /bin/nc (the tests read the -v lines of busybox's full nc, which Debian's busybox lacks);
// - PODMAN is a wrapper that gives podman this harness's config (merged with a test's own
//   CONTAINERS_CONF when it sets one), and turns each network podman creates into a ctnet network
//   of the same subnet (test/lab/podman-networks.ts; podman's dnsname entry stays, chained after
//   ctnet, as podman's DNS server), removed again with the podman network;
// - on PATH: nc is the host's netcat-openbsd with -N (end after EOF, as the tests expect), and
//   iptables turns the one command that reaches into a reference plugin's internals,
//   `iptables -t nat -F CNI-HOSTPORT-DNAT` in "podman network reload", into its ctnet equivalent
//   (emptying ctnet's port maps); every other iptables call goes to iptables;
// - the container's nameservers (the machine's /etc/resolv.conf, as podman copies it) are addresses
//   in the lab's world, answered by a lab DNS server ("podman network create" runs nslookup).
// Needs podman, runc, conmon, busybox-static, bats, slirp4netns, catatonit, netcat-openbsd, curl,
// gcc, the dnsname plugin (scripts/install.sh). CTNET_BATS_REFERENCE=1 runs the same with podman's
// own networks (the reference plugins and iptables, in the lab host), for comparison.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, ROOT, type Result } from '../../src/lab/lab.ts';
import { Podman, REFERENCE_PLUGINS } from './podman.ts';

const SUITE = process.env.PODMAN_SYSTEM_TESTS ?? join(ROOT, '..', 'shared', 'tools', 'podman-system-tests');
const TEST_IMAGE = 'quay.io/libpod/testimage:20220615';
const CGROUP2_MAGIC = 0x63677270;
/** CTNET_BATS_REFERENCE=1: the same run with podman's own networks (the reference plugins), for comparison. */
const REFERENCE = Boolean(process.env.CTNET_BATS_REFERENCE);
/** Where host-local (the reference run's IPAM) keeps each network's leases, whatever the config says. */
const HOST_LOCAL = '/var/lib/cni/networks';
/** The networks the tests make: the default one, and `podman network create` of a-, b-, c-, testnet-, testnet2- names. */
const TEST_NETWORK = /^(podman|[abc]-\w{10}|testnet2?-\w{10})$/;

/**
 * The nameservers podman 4.3 writes into a container's resolv.conf on a network without DNS of its
 * own: the machine's, less loopback ones; Google's when none is left.
 */
function containerNameservers(): string[] {
  let text = '';
  try {
    text = readFileSync('/etc/resolv.conf', 'utf8');
  } catch {
    // none: podman's defaults
  }
  const v4 = [...text.matchAll(/^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/gm)].map((m) => m[1]!).filter((a) => !a.startsWith('127.'));
  return v4.length > 0 ? v4 : ['8.8.8.8', '8.8.4.4'];
}

/** Why a test may skip on this machine (bats' own skip reasons), and whether it applies here. */
function allowedSkips(): { reason: RegExp; why: string }[] {
  const skips = [{ reason: /only meaningful for rootless/, why: 'the tests run as root' }];
  if (statfsSync('/sys/fs/cgroup').type !== CGROUP2_MAGIC) {
    skips.push({ reason: /run --uidmap fails on cgroups v1|requires cgroupsv2/, why: 'this machine has cgroups v1' });
  }
  if (!/^\s*nameserver\s+\S*:/m.test(existsSync('/etc/resolv.conf') ? readFileSync('/etc/resolv.conf', 'utf8') : '')) {
    skips.push({ reason: /needs an ipv6 nameserver/, why: 'the machine\'s resolv.conf has no IPv6 nameserver (the test never edits it)' });
  }
  return skips;
}

interface TapResult {
  readonly n: number;
  readonly name: string;
  readonly ok: boolean;
  readonly skip: string | undefined;
  /** How long it took (bats --timing). */
  readonly ms: number | undefined;
  /** The diagnostic lines bats printed after it (a failure's output). */
  readonly detail: string;
}

function parseTap(out: string): TapResult[] {
  const results: { n: number; name: string; ms: number | undefined; ok: boolean; skip: string | undefined; detail: string[] }[] = [];
  for (const line of out.split('\n')) {
    const m = /^(not ok|ok) (\d+) (.*?)(?: # skip ?(.*))?$/.exec(line);
    if (m) {
      const timed = / in (\d+)ms$/.exec(m[3]!); // bats --timing
      results.push({ n: Number(m[2]), name: timed ? m[3]!.slice(0, timed.index) : m[3]!, ms: timed ? Number(timed[1]) : undefined, ok: m[1] === 'ok', skip: m[4], detail: [] });
    }
    else if (results.length > 0 && line.startsWith('#')) results.at(-1)!.detail.push(line);
  }
  return results.map((r) => ({ ...r, detail: r.detail.join('\n') }));
}

/** The test names in the .bats file, in order. */
function testNames(file: string): string[] {
  return [...readFileSync(file, 'utf8').matchAll(/^@test "(.*)" \{$/gm)].map((m) => m[1]!);
}

/**
 * Merges two containers.conf files, the second one's keys winning: enough TOML for these files
 * (tables, `key = value` entries whose value may span lines). In awk, so the wrapper stays a shell
 * script (podman runs hundreds of times).
 */
const MERGE_AWK = String.raw`
FNR == 1 { table = ""; key = "" }
/^[ \t]*\[[^]]*\][ \t]*(#.*)?$/ {
  table = $0; sub(/^[ \t]*\[[ \t]*/, "", table); sub(/[ \t]*\].*$/, "", table)
  if (!(table in seen)) { seen[table] = 1; order[++tables] = table }
  key = ""; next
}
/^[ \t]*(#.*)?$/ { next }
/^[ \t]*[A-Za-z0-9_."-]+[ \t]*=/ {
  k = $0; sub(/^[ \t]*/, "", k); sub(/[ \t]*=.*$/, "", k)
  key = table SUBSEP k
  if (!(key in val)) { count[table]++; keys[table, count[table]] = k }
  val[key] = $0; next
}
key != "" { val[key] = val[key] "\n" $0 }
END {
  for (i = 1; i <= count[""]; i++) print val["" SUBSEP keys["", i]]
  for (t = 1; t <= tables; t++) {
    tb = order[t]; if (tb == "") continue
    print "[" tb "]"
    for (i = 1; i <= count[tb]; i++) print val[tb SUBSEP keys[tb, i]]
  }
}
`;

describe('podman 4.3.1\'s own networking tests (500-networking.bats) with ctnet as the default network', () => {
  let lab: Lab;
  let tmp: string;
  let pm: Podman;
  let results: TapResult[] = [];
  let batsOut = '';
  let made = '';
  const names = testNames(join(SUITE, '500-networking.bats'));

  before(async () => {
    for (const [what, path] of [['bats', '/usr/bin/bats'], ['slirp4netns', '/usr/bin/slirp4netns'], ['catatonit', '/usr/libexec/podman/catatonit'],
      ['netcat-openbsd', '/usr/bin/nc.openbsd'], ['curl', '/usr/bin/curl'], ['the podman system tests', join(SUITE, '500-networking.bats')]] as const) {
      assert.ok(existsSync(path), `${what} is missing (${path}): run scripts/install.sh${what.startsWith('the podman') ? ', or set PODMAN_SYSTEM_TESTS' : ''}`);
    }
    lab = await Lab.create();
    tmp = mkdtempSync(join(tmpdir(), `ctbats-${lab.id}-`));
    const bin = join(tmp, 'cni-bin');
    const conf = join(tmp, 'networks');
    // podman's default network is "podman" (10.88.0.0/16): a conflist of that name replaces it.
    // (A reference run leaves the name to podman's own default network, bridge cni-podman0 on the same subnet.)
    // --dns off: podman's default network has no DNS server (its containers get the host's resolvers).
    if (!REFERENCE) await lab.ctnetOk(['network', 'create', 'podman', '--subnet', '10.88.0.0/16', '--dns', 'off']);
    await lab.ctnetOk(['cni', 'install', '--bin-dir', bin, '--conf-dir', conf, ...(REFERENCE ? [] : ['--network', 'podman'])]);

    const nc = join(tmp, 'nc');
    await new Promise<void>((resolve, reject) => execFile('cc', ['-static', '-O2', '-o', nc, join(ROOT, 'test', 'lab', 'nc.c')],
      (err, _o, stderr) => (err ? reject(new Error(`building test/lab/nc.c: ${stderr}`)) : resolve())));
    pm = await Podman.create(lab, { backend: 'cni', cniPluginDirs: [bin, REFERENCE_PLUGINS], networkConfigDir: conf, image: TEST_IMAGE, imageFiles: { 'bin/nc': { copy: nc } } });

    // The world answers DNS on the addresses containers use as nameservers.
    for (const ns of containerNameservers()) {
      const r = await lab.inWorld(['ip', 'addr', 'add', `${ns}/32`, 'dev', 'lo']);
      assert.equal(r.code, 0, r.stderr);
    }
    lab.serveInWorld('dns', { dns: 53 });

    const shims = join(tmp, 'shims');
    mkdirSync(shims);
    const script = (name: string, text: string) => {
      writeFileSync(join(shims, name), text);
      chmodSync(join(shims, name), 0o755);
    };
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    writeFileSync(join(tmp, 'merge.awk'), MERGE_AWK);
    const hook = [join(ROOT, 'scripts', 'node'), join(ROOT, 'test', 'lab', 'podman-networks.ts')].map(q).join(' ');
    made = join(tmp, 'ctnet-networks'); // the networks made ctnet's, one a line; removed ones go to .removed
    writeFileSync(made, '');
    script('podman', [
      '#!/bin/sh',
      '# podman with the harness\'s storage and config (test/lab/podman.ts), merged with a test\'s own',
      '# CONTAINERS_CONF; the networks it creates become ctnet networks (test/lab/podman-networks.ts).',
      `conf=${q(pm.env.CONTAINERS_CONF!)}`,
      'if [ -n "${CONTAINERS_CONF:-}" ] && [ "$CONTAINERS_CONF" != "$conf" ]; then',
      `  merged=${q(join(tmp, 'merged'))}-$(cksum < "$CONTAINERS_CONF" | cut -d' ' -f1).conf`,
      `  awk -f ${q(join(tmp, 'merge.awk'))} "$conf" "$CONTAINERS_CONF" > "$merged"`,
      '  conf=$merged',
      'fi',
      `export CONTAINERS_CONF="$conf" CONTAINERS_STORAGE_CONF=${q(pm.env.CONTAINERS_STORAGE_CONF!)} TMPDIR=${q(pm.env.TMPDIR!)}`,
      `export CONF_DIR=${q(conf)} TEMPLATE=podman CTNET=${q(lab.ctnetBin)} CTNET_STATE_DIR=${q(lab.stateDir)} NODE_EXTRA_CA_CERTS=`,
      `log=${q(join(tmp, 'podman-networks.log'))}`,
      `made=${q(made)}`,
      `case "${REFERENCE ? 'reference run' : '$1 $2'}" in`,
      '"network create")',
      '  out=$(/usr/bin/podman "$@") || { rc=$?; [ -n "$out" ] && printf \'%s\\n\' "$out"; exit $rc; }',
      `  ${hook} "$(printf '%s\\n' "$out" | tail -n 1)" >>"$made" 2>>"$log" || { echo "making $out a ctnet network failed: see $log" >&2; exit 1; }`,
      '  printf \'%s\\n\' "$out"; exit 0 ;;',
      '"network rm"|"network prune")',
      '  /usr/bin/podman "$@"; rc=$?',
      '  for n in $(cat "$made"); do',
      '    [ -e "$CONF_DIR/$n.conflist" ] && continue',
      '    "$CTNET" network rm "$n" >/dev/null 2>>"$log" || echo "ctnet network rm $n failed: see $log" >&2',
      '    sed -i "/^$n\\$/d" "$made"; echo "$n" >> "$made.removed"',
      '  done',
      '  exit $rc ;;',
      'esac',
      'exec /usr/bin/podman "$@"',
      '',
    ].join('\n'));
    script('nc', '#!/bin/sh\n# netcat-openbsd ends after EOF only with -N; the tests expect that.\nexec /usr/bin/nc.openbsd -N "$@"\n');
    script('iptables', [
      '#!/bin/sh',
      '# "podman network reload" flushes the reference portmap plugin\'s DNAT chain to lose the published',
      '# ports behind podman\'s back. The ctnet equivalent empties ctnet\'s port maps (which nft monitor',
      '# reports as element deletions: ctnetd\'s table guard restores only flushed tables, chains and sets).',
      `if [ "$*" = "-t nat -F CNI-HOSTPORT-DNAT" ]${REFERENCE ? ' && false' : ''}; then`,
      '  exec nft flush map inet ctnet ports4 \\; flush map inet ctnet ports4_any \\; flush map inet ctnet ports6 \\; flush map inet ctnet ports6_any',
      'fi',
      'exec /usr/sbin/iptables "$@"',
      '',
    ].join('\n'));

    mkdirSync(join(tmp, 'bats'));
    const r = await new Promise<Result>((resolve) => {
      execFile('nsenter', [`--net=/run/netns/${lab.host}`, 'bats', '--tap', '--timing', join(SUITE, '500-networking.bats')], {
        cwd: SUITE, timeout: 600_000, maxBuffer: 64 << 20,
        env: { ...process.env, PODMAN: join(shims, 'podman'), PATH: `${shims}:${process.env.PATH}`, TMPDIR: join(tmp, 'bats'), BATS_TMPDIR: join(tmp, 'bats') },
      }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
    });
    batsOut = r.stdout + r.stderr;
    results = parseTap(r.stdout);
  });

  const hostLocalBefore = existsSync(HOST_LOCAL) ? new Set(readdirSync(HOST_LOCAL)) : undefined;
  after(async () => {
    try {
      await pm?.cleanup();
    } finally {
      // host-local keeps a lock and the last address per network after its last container: the
      // reference run's networks, if this run made them.
      if (REFERENCE && existsSync(HOST_LOCAL)) {
        for (const n of readdirSync(HOST_LOCAL)) if (TEST_NETWORK.test(n) && !hostLocalBefore?.has(n)) rmSync(join(HOST_LOCAL, n), { recursive: true, force: true });
        if (!hostLocalBefore) {
          try {
            rmdirSync(HOST_LOCAL); // empty only
          } catch {
            // someone else's networks are in it
          }
        }
      }
      await lab?.destroy();
      if (tmp) rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('bats ran every test of the file', () => {
    assert.deepEqual(results.map((r) => r.name), names, `bats output:\n${batsOut.slice(-4000)}`);
  });

  it('the networks the tests created were ctnet networks too, each removed with its podman network; no container is left in ctnet', { skip: REFERENCE && 'a reference run' }, async () => {
    const removed = existsSync(`${made}.removed`) ? readFileSync(`${made}.removed`, 'utf8').split('\n').filter(Boolean) : [];
    assert.ok(removed.some((n) => n.startsWith('testnet-')), `ctnet networks made and removed: ${removed.join(', ') || 'none'}`);
    assert.equal(readFileSync(made, 'utf8').trim(), '', 'ctnet networks whose podman network is gone');
    const networks = (JSON.parse(await lab.ctnetOk(['network', 'ls', '--json'])) as { name: string }[]).map((n) => n.name);
    assert.deepEqual(networks, ['podman']);
    assert.deepEqual(JSON.parse(await lab.ctnetOk(['ls', '--json'])), []);
  });

  for (const name of names) {
    it(name, (t) => {
      const r = results.find((x) => x.name === name);
      assert.ok(r, `bats did not report "${name}"`);
      if (r.ms !== undefined) t.diagnostic(`${(r.ms / 1000).toFixed(1)} s`);
      if (r.skip !== undefined) {
        const allowed = allowedSkips().find((s) => s.reason.test(r.skip!));
        assert.ok(allowed, `skipped for a reason that does not hold here: ${r.skip}`);
        return;
      }
      assert.ok(r.ok, `not ok:\n${r.detail}`);
    });
  }
});
