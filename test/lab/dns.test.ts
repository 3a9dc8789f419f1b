// Issue 15: names, served by ctnetd on each network's gateways. Real queries with dig (Debian's
// bind9-dnsutils) from inside sandboxes; forwarding to a dnsmasq started in the lab's world (the
// only upstream any query here reaches); the server under bad packets and a SIGKILL.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab, ROOT, UPLINK } from '../../src/lab/lab.ts';

interface Dig {
  readonly code: number;
  readonly status: string | undefined;
  /** "TYPE DATA" per answer record. */
  readonly answers: string[];
  readonly text: string;
}

describe('DNS served by ctnetd', () => {
  let lab: Lab;
  const logPath = () => join(lab.stateDir, 'ctnetd.log');
  const readLog = () => {
    try {
      return readFileSync(logPath(), 'utf8');
    } catch {
      return '';
    }
  };
  const dnsmasqLog = () => {
    try {
      return readFileSync(join(lab.stateDir, 'dnsmasq.log'), 'utf8');
    } catch {
      return '';
    }
  };
  const eventually = async (what: string, cond: () => Promise<boolean> | boolean, ms = 60_000) => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const startDaemon = async () => {
    const fd = openSync(logPath(), 'a');
    spawn('nsenter', [`--net=/run/netns/${lab.host}`, join(ROOT, 'bin', 'ctnet'), 'daemon'], {
      env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: ['ignore', 'ignore', fd], detached: true,
    }).unref();
    closeSync(fd);
  };
  const parse = (code: number, text: string): Dig => {
    const status = /status: (\w+)/.exec(text)?.[1];
    const section = /;; ANSWER SECTION:\n([\s\S]*?)\n\n/.exec(text)?.[1] ?? '';
    const answers = section.split('\n').filter(Boolean).map((l) => l.split(/\s+/)).map((f) => `${f[3]} ${f[4]}`);
    return { code, status, answers, text };
  };
  /** dig from inside sandbox s (one try, so a failure is prompt). */
  const dig = async (s: string, server: string, name: string, type = 'A', more: string[] = []): Promise<Dig> => {
    const r = await lab.ctnet(['exec', s, '--', 'dig', `@${server}`, '+tries=1', '+time=2', ...more, name, type]);
    return parse(r.code, r.stdout + r.stderr);
  };
  const digHost = async (server: string, name: string, type = 'A'): Promise<Dig> => {
    const r = await lab.inHost(['dig', `@${server}`, '+tries=1', '+time=2', name, type]);
    return parse(r.code, r.stdout + r.stderr);
  };
  const addr = async (s: string, network: string, family: 4 | 6) => {
    const v = JSON.parse(await lab.ctnetOk(['inspect', s, '--json'])) as { interfaces: { network: string; addresses: string[] }[] };
    const ips = v.interfaces.find((i) => i.network === network)!.addresses.map((a) => a.split('/')[0]!);
    return ips.find((ip) => ip.includes(':') === (family === 6))!;
  };

  before(async () => {
    lab = await Lab.create();
    // The upstream: dnsmasq in the world, answering upstream.test and nothing else, logging every query.
    spawn('nsenter', [`--net=/run/netns/${lab.world}`, 'dnsmasq', '--keep-in-foreground', '--no-resolv', '--no-hosts', '--conf-file=/dev/null',
      '--user=root', '--pid-file=', `--listen-address=${UPLINK.world4}`, '--bind-interfaces', '--address=/upstream.test/203.0.113.10',
      '--log-queries', `--log-facility=${join(lab.stateDir, 'dnsmasq.log')}`], { stdio: 'ignore', detached: true }).unref();
    const fwd = ['--dns-forward', UPLINK.world4];
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.61.1.0/24', '--subnet', 'fd00:61:1::/64', ...fwd]);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.61.2.0/24', ...fwd]);
    await lab.ctnetOk(['network', 'create', 'inner', '--subnet', '10.61.3.0/24', '--internal']);
    await lab.ctnetOk(['network', 'create', 'quiet', '--subnet', '10.61.4.0/24', '--dns', 'off', ...(['--host-access'])]);
    await startDaemon();
    await lab.ctnetOk(['create', 'web', '--network', 'front', '--alias', 'api']);
    await lab.ctnetOk(['create', 'web2', '--network', 'front', '--alias', 'API']); // aliases compare without case
    await lab.ctnetOk(['create', 'other', '--network', 'back']);
    await lab.ctnetOk(['create', 'i1', '--network', 'inner']);
    await lab.ctnetOk(['create', 'q1', '--network', 'quiet']);
    await eventually('ctnetd answers on every DNS network', () =>
      ['10.61.1.1', 'fd00:61:1::1', '10.61.2.1', '10.61.3.1'].every((a) => readLog().includes(`on ${a} port 53`)));
  });
  after(async () => {
    await lab?.ctnet(['daemon', 'stop']);
    await lab?.destroy();
  });

  it('A, AAAA, NAME.NETWORK, a shared alias, PTR, NODATA and NXDOMAIN, on a dual-stack network', async () => {
    const w4 = await addr('web', 'front', 4);
    const w6 = await addr('web', 'front', 6);
    const v4 = await addr('web2', 'front', 4);
    for (const name of ['web2', 'web2.front', 'WEB2.Front.']) {
      const a = await dig('web', '10.61.1.1', name, 'A');
      assert.equal(a.status, 'NOERROR', a.text);
      assert.deepEqual(a.answers, [`A ${v4}`], a.text);
      assert.match(a.text, /flags: qr aa/, 'authoritative');
    }
    const aaaa = await dig('web2', 'fd00:61:1::1', 'web.front', 'AAAA');
    assert.deepEqual(aaaa.answers, [`AAAA ${w6}`], aaaa.text);
    const both = await dig('web', '10.61.1.1', 'api', 'A');
    assert.deepEqual(both.answers.sort(), [`A ${w4}`, `A ${v4}`].sort(), both.text);
    const firsts = new Set<string>();
    for (let i = 0; i < 4; i++) firsts.add((await dig('web', '10.61.1.1', 'api.front', 'A')).answers[0]!);
    assert.equal(firsts.size, 2, 'round robin: each address comes first in turn');
    const ptr = await dig('web2', '10.61.1.1', '', 'PTR', ['-x', w4]);
    assert.deepEqual(ptr.answers, ['PTR web.front.'], ptr.text);
    const ptr6 = await dig('web2', '10.61.1.1', '', 'PTR', ['-x', w6]);
    assert.deepEqual(ptr6.answers, ['PTR web.front.'], ptr6.text);
    // A name that exists, asked for a family (or type) it lacks: NODATA, not NXDOMAIN.
    const other4 = await addr('other', 'back', 4);
    const nodata = await dig('other', '10.61.2.1', 'other', 'AAAA');
    assert.equal(nodata.status, 'NOERROR', nodata.text);
    assert.deepEqual(nodata.answers, []);
    assert.match(nodata.text, /AUTHORITY SECTION:\nback\.\s+0\s+IN\s+SOA/, 'a negative answer carries the zone\'s SOA');
    assert.equal((await dig('web', '10.61.1.1', 'web', 'MX')).status, 'NOERROR');
    assert.deepEqual((await dig('other', '10.61.2.1', 'other.back', 'A')).answers, [`A ${other4}`]);
    for (const name of ['nobody', 'nobody.front']) assert.equal((await dig('web', '10.61.1.1', name)).status, 'NXDOMAIN', name);
    // Names of other networks are not visible: exactly as if nobody had them.
    for (const name of ['web', 'web.front', 'api']) assert.equal((await dig('other', '10.61.2.1', name)).status, 'NXDOMAIN', name);
    // From the host: dig @GATEWAY NAME.
    assert.deepEqual((await digHost('10.61.1.1', 'web.front')).answers, [`A ${w4}`]);
  });

  it('a service\'s NAME and NAME.NETWORK answer its VIP on its network, from its create until its rm returns', async () => {
    const out = await lab.ctnetOk(['service', 'create', 'shop', '--network', 'front', '--port', '80', '--to', 'label:app=shop', '--json']);
    const { vip, vip6 } = JSON.parse(out) as { vip: string; vip6?: string };
    assert.match(vip, /^10\.61\.1\.\d+$/);
    assert.match(vip6 ?? '', /^fd00:61:1::/, 'a dual-stack network gives a service a VIP of each family');
    for (const name of ['shop', 'shop.front', 'SHOP.Front.']) {
      const a = await dig('web', '10.61.1.1', name);
      assert.equal(a.status, 'NOERROR', a.text);
      assert.deepEqual(a.answers, [`A ${vip}`], a.text);
    }
    const aaaa = await dig('web', 'fd00:61:1::1', 'shop', 'AAAA');
    assert.equal(aaaa.status, 'NOERROR', aaaa.text);
    assert.deepEqual(aaaa.answers, [`AAAA ${vip6}`], aaaa.text);
    assert.deepEqual((await dig('web2', '10.61.1.1', '', 'PTR', ['-x', vip])).answers, ['PTR shop.front.']);
    assert.equal((await dig('other', '10.61.2.1', 'shop')).status, 'NXDOMAIN', 'not on another network');
    assert.equal((await dig('other', '10.61.2.1', 'shop.front')).status, 'NXDOMAIN');
    // A service on the other network, named like a sandbox here: each network sees its own.
    const back = JSON.parse(await lab.ctnetOk(['service', 'create', 'web', '--network', 'back', '--port', '80', '--to', 'label:app=web', '--json'])) as { vip: string };
    assert.deepEqual((await dig('other', '10.61.2.1', 'web')).answers, [`A ${back.vip}`]);
    assert.deepEqual((await dig('web2', '10.61.1.1', 'web')).answers, [`A ${await addr('web', 'front', 4)}`]);
    await lab.ctnetOk(['service', 'rm', 'shop']);
    assert.equal((await dig('web', '10.61.1.1', 'shop')).status, 'NXDOMAIN', 'gone when rm returns');
    await lab.ctnetOk(['service', 'rm', 'web']);
    assert.equal((await dig('other', '10.61.2.1', 'web')).status, 'NXDOMAIN');
  });

  it('forwards other names to --dns-forward (UDP, TCP, EDNS); an --internal network forwards nothing; --dns off answers nowhere', async () => {
    const udp = await dig('web', '10.61.1.1', 'www.upstream.test');
    assert.deepEqual(udp.answers, ['A 203.0.113.10'], udp.text);
    assert.match(udp.text, /OPT PSEUDOSECTION:\n; EDNS: version: 0/, 'EDNS passed through');
    const tcp = await dig('other', '10.61.2.1', 'tcp.upstream.test', 'A', ['+tcp']);
    assert.deepEqual(tcp.answers, ['A 203.0.113.10'], tcp.text);
    assert.match(dnsmasqLog(), /query\[A\] www\.upstream\.test from 198\.51\.100\.2/);
    const refused = await dig('i1', '10.61.3.1', 'internal-only.upstream.test');
    assert.equal(refused.status, 'REFUSED', refused.text);
    assert.equal(dnsmasqLog().includes('internal-only'), false, 'the internal network\'s query never left');
    const i1 = await addr('i1', 'inner', 4);
    assert.deepEqual((await dig('i1', '10.61.3.1', 'i1')).answers, [`A ${i1}`], 'an --internal network still has its names');
    const quiet = await dig('q1', '10.61.4.1', 'q1');
    assert.notEqual(quiet.code, 0, quiet.text);
    assert.equal(quiet.status, undefined, '--dns off: nothing answers');
    assert.equal(readLog().includes('10.61.4.1 port 53'), false);
  });

  it('a name answers before create returns and is gone before rm returns; bad aliases change nothing', async () => {
    for (let i = 0; i < 3; i++) {
      await lab.ctnetOk(['create', 'late', '--network', 'front', '--alias', 'later']);
      const a = await dig('web', '10.61.1.1', 'later.front');
      assert.equal(a.status, 'NOERROR', a.text);
      assert.equal(a.answers.length, 1);
      await lab.ctnetOk(['rm', 'late']);
      assert.equal((await dig('web', '10.61.1.1', 'late')).status, 'NXDOMAIN');
      assert.equal((await dig('web', '10.61.1.1', 'later')).status, 'NXDOMAIN');
    }
    const clash = await lab.ctnet(['create', 'x', '--network', 'front', '--alias', 'web']);
    assert.equal(clash.code, 1);
    assert.match(clash.stderr, /--alias web is the name of another sandbox on network front/);
    const bad = await lab.ctnet(['create', 'y', '--network', 'front', '--alias', 'no_way']);
    assert.match(bad.stderr, /--alias "no_way" is not a valid DNS label/);
    const named = await lab.ctnet(['create', 'api', '--network', 'front']);
    assert.match(named.stderr, /sandbox name api is an alias of web/);
    const ls = await lab.ctnetOk(['ls']);
    for (const s of ['x', 'y', 'api']) assert.equal(new RegExp(`^${s}\\s`, 'm').test(ls), false, `${s} was not made`);
    // connect --alias: the name on that network only.
    await lab.ctnetOk(['connect', 'back', 'web2', '--alias', 'db']);
    assert.equal((await dig('other', '10.61.2.1', 'db')).answers.length, 1);
    assert.equal((await dig('web', '10.61.1.1', 'db')).status, 'NXDOMAIN');
    await lab.ctnetOk(['disconnect', 'back', 'web2']);
    assert.equal((await dig('other', '10.61.2.1', 'db')).status, 'NXDOMAIN');
  });

  it('sandboxes use it: ctnet run resolves by name (getent, ping), its resolv.conf goes with the sandbox', async () => {
    const w4 = await addr('web', 'front', 4);
    const getent = await lab.ctnet(['run', '--rm', '--name', 'client', '--network', 'front', '--', 'getent', 'ahostsv4', 'web']);
    assert.equal(getent.code, 0, getent.stderr);
    assert.match(getent.stdout, new RegExp(`^${w4.replaceAll('.', '\\.')}\\s`, 'm'));
    const ping = await lab.ctnet(['run', '--rm', '--name', 'pinger', '--network', 'front', '--', 'ping', '-c', '1', '-W', '2', 'web2']);
    assert.equal(ping.code, 0, ping.stdout + ping.stderr);
    await lab.ctnetOk(['create', 'keep', '--network', 'back', '--network', 'front']);
    const conf = await lab.ctnetOk(['exec', 'keep', '--', 'cat', '/etc/resolv.conf']);
    assert.match(conf, /^nameserver 10\.61\.2\.1\nnameserver 10\.61\.1\.1\nnameserver fd00:61:1::1\nsearch back front$/m);
    const inst = (await lab.ctnetOk(['inspect', 'keep', '--json'])).match(/"netns": "\/run\/netns\/([^"]+)"/)![1]!;
    assert.ok(existsSync(`/etc/netns/${inst}/resolv.conf`));
    await lab.ctnetOk(['rm', 'keep']);
    assert.equal(existsSync(`/etc/netns/${inst}`), false, 'removed with the sandbox');
    // Without DNS, the host's resolv.conf stays: nothing is written.
    await lab.ctnetOk(['create', 'q2', '--network', 'quiet']);
    const q2 = (await lab.ctnetOk(['inspect', 'q2', '--json'])).match(/"netns": "\/run\/netns\/([^"]+)"/)![1]!;
    assert.equal(existsSync(`/etc/netns/${q2}`), false);
    await lab.ctnetOk(['rm', 'q2']);
  });

  it('churn: dnsperf at a fixed rate for names that stay while 50 sandboxes are created and removed: none lost, every answer NOERROR', async () => {
    const file = join(lab.stateDir, 'stay.txt');
    writeFileSync(file, 'web A\nweb2.front A\napi A\nweb AAAA\napi.front AAAA\n');
    // Until SIGINT (dnsperf then reports what it sent, and queries in flight as "interrupted", not lost).
    const child = spawn('nsenter', [`--net=/run/netns/${lab.host}`, lab.ctnetBin, 'exec', 'web2', '--', 'dnsperf', '-s', '10.61.1.1', '-d', file, '-l', '3600', '-Q', '300'],
      { env: { ...process.env, CTNET_STATE_DIR: lab.stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const closed = new Promise((r) => child.on('close', r));
    try {
      // (dnsperf's stdout is a pipe, block-buffered: its status lines arrive only at its end.)
      for (let i = 0; i < 50; i++) {
        await lab.ctnetOk(['create', `churn${i}`, '--network', 'front', '--alias', 'api']); // shares the alias the load asks for
        await lab.ctnetOk(['rm', `churn${i}`]);
      }
    } finally {
      child.kill('SIGINT');
      await closed;
    }
    const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? NaN);
    const sent = num(/Queries sent:\s+(\d+)/);
    const lost = num(/Queries lost:\s+(\d+)/);
    const codes = /Response codes:\s+(.*)/.exec(out)?.[1] ?? '';
    console.log(`# churn: 50 sandboxes created and removed; dnsperf sent ${sent} queries at 300/s, ${lost} lost; response codes: ${codes}`);
    assert.ok(sent > 0, out);
    assert.equal(lost, 0, out);
    assert.match(codes, /^NOERROR \d+ \(100\.00%\)$/, 'every answer NOERROR: the names that stay never went missing');
  });

  it('bad packets get FORMERR or nothing, and the server keeps answering', async () => {
    const script = `
import socket, struct
def udp(b):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5); s.sendto(b, ('10.61.1.1', 53))
    try: return s.recv(65535)
    except socket.timeout: return None
res = []
res.append(udp(b'\\x12'))                                   # shorter than a header
loop = b'\\xab\\xcd\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00' + b'\\xc0\\x0c' + b'\\x00\\x01\\x00\\x01'  # a name pointing at itself
res.append(udp(loop))
trunc = b'\\xab\\xce\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00' + b'\\x03web'  # a question cut short
res.append(udp(trunc))
t = socket.create_connection(('10.61.1.1', 53), timeout=3)
t.sendall(struct.pack('!H', 65535) + b'\\xab\\xcf\\x01\\x00\\x00\\x01' + b'\\xff' * 65529)
try: r = t.recv(65535)[2:]  # past the TCP length prefix
except Exception: r = None
res.append(r)
for r in res:
    print('rcode=%d id=%s' % (r[3] & 15, r[0:2].hex()) if r and len(r) >= 12 else 'none')
`;
    const r = await lab.inHost(['python3', '-c', script]);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 4, r.stdout + r.stderr);
    assert.equal(lines[0], 'none', 'a packet shorter than a header is dropped');
    for (const l of lines.slice(1)) assert.match(l, /^none$|^rcode=1 /, `FORMERR or nothing: ${l}`);
    assert.equal((await dig('web', '10.61.1.1', 'web2')).status, 'NOERROR', 'still answering');
    assert.match(readLog(), /answering for network front/);
    assert.equal(/ dns: .*(TypeError|RangeError)/.test(readLog()), false);
  });

  it('a flood from one sandbox does not stall the others (per-client rate limit)', async () => {
    const file = join(lab.stateDir, 'flood.txt');
    writeFileSync(file, 'web2 A\nnobody A\nwww.upstream.test A\n');
    const flood = lab.ctnet(['exec', 'web', '--', 'dnsperf', '-s', '10.61.1.1', '-d', file, '-l', '6', '-q', '500']);
    await new Promise((r) => setTimeout(r, 1000));
    let answered = 0;
    for (let i = 0; i < 5; i++) if ((await dig('web2', '10.61.1.1', 'web', 'A', ['+time=3'])).status === 'NOERROR') answered++;
    const f = await flood;
    const sent = Number(/Queries sent:\s+(\d+)/.exec(f.stdout)?.[1] ?? 0);
    assert.ok(sent > 0, f.stdout + f.stderr);
    console.log(`# flood: dnsperf sent ${sent} queries in 6 s, ${/Queries lost:\s+(\d+)/.exec(f.stdout)?.[1]} unanswered (dropped over the per-client limit of 5000/s, if it went faster); the other sandbox: ${answered}/5 answered`);
    assert.equal(answered, 5, `another sandbox was answered during a flood of ${sent} queries`);
    assert.equal((await dig('web', '10.61.1.1', 'web2')).status, 'NOERROR', 'and the flooder is answered again after it');
  });

  it('ctnetd SIGKILLed: queries fail at once (no hang), and answers resume when it is back', async () => {
    const pid = Number(readFileSync(join(lab.stateDir, 'ctnetd.pid'), 'utf8').trim());
    process.kill(pid, 'SIGKILL');
    await eventually('ctnetd is gone', () => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    });
    const down = await dig('web', '10.61.1.1', 'web2');
    assert.notEqual(down.code, 0);
    assert.match(down.text, /connection refused|communications error/i, `a prompt failure (port unreachable), not a timeout: ${down.text}`);
    const before = readLog().length;
    await startDaemon();
    await eventually('ctnetd answers again', () => readLog().slice(before).includes('on 10.61.1.1 port 53'));
    assert.equal((await dig('web', '10.61.1.1', 'web2')).status, 'NOERROR');
  });
});
