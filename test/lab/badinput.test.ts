// Issue #2, point 9, issue #3, point 8, and issue #4, point 7: bad input gets a clear error and changes nothing (store and kernel alike).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../../src/lab/lab.ts';
import { readStore } from './consistency.ts';

describe('bad input', () => {
  let lab: Lab;
  const snapshot = async () => JSON.stringify({
    store: readStore(lab),
    links: (await lab.inHost(['ip', '-o', 'link'])).stdout.replace(/\s+/g, ' '),
    // -s: without counters, which move with background traffic (IPv6 router solicitations, MLD)
    nft: (await lab.inHost(['nft', '-s', 'list', 'ruleset'])).stdout,
  });
  before(async () => {
    lab = await Lab.create();
    await lab.ctnetOk(['network', 'create', 'web', '--subnet', '10.80.0.0/24']);
    await lab.ctnetOk(['create', 'app', '--network', 'web', '--ip', '10.80.0.9', '-p', '8080:80']);
    await lab.ctnetOk(['network', 'create', 'closed', '--subnet', '10.81.9.0/24', '--internal']);
    await lab.ctnetOk(['policy', 'allow', '--from', 'app', '--to', 'net:closed', '--name', 'taken']);
  });
  after(() => lab?.destroy());

  const cases: [string[], RegExp][] = [
    [['network', 'create', 'n2', '--subnet', '10.80.0.0/16'], /overlaps 10\.80\.0\.0\/24 of network web/],
    [['network', 'create', 'n2', '--subnet', '198.51.100.0/25'], /overlaps 198\.51\.100\.0\/24, routed via uplink0/],
    [['network', 'create', 'n2', '--subnet', '10.0.0.0/33'], /is not a CIDR/],
    [['network', 'create', 'n2', '--subnet', '10.81.0.1/24'], /host bits/],
    [['network', 'create', 'n2', '--subnet', '10.81.0.0/24', '--gateway', '10.82.0.1'], /outside every --subnet/],
    [['network', 'create', '', '--subnet', '10.81.0.0/24'], /name is empty/],
    [['network', 'create', 'x'.repeat(60), '--subnet', '10.81.0.0/24'], /limit is 48/],
    [['network', 'create', 'a;reboot', '--subnet', '10.81.0.0/24'], /not allowed/],
    [['network', 'create', 'n2', '--subnet', '10.81.0.0/24', '--bridge', 'br0 type veth'], /not a valid interface name/],
    [['network', 'create', 'web', '--subnet', '10.81.0.0/24'], /exists already/],
    // Issue 12, point 7: ranges with a kernel meaning of their own, and addresses read as octal.
    [['network', 'create', 'n2', '--subnet', '127.1.0.0/24'], /overlaps 127\.0\.0\.0\/8, the loopback range/],
    [['network', 'create', 'n2', '--subnet', '169.254.7.0/24'], /link-local range/],
    [['network', 'create', 'n2', '--subnet', '0.0.0.0/8'], /this network/],
    [['network', 'create', 'n2', '--subnet', '010.81.0.0/24'], /not an IPv4 address in plain form/],
    [['create', 'b', '--network', 'web', '--ip', '10.80.0.050'], /not an IPv4 address in plain form/],
    [['create', 'b', '--network', 'web', '--ip', '10.80.0.5', '--ip', '10.80.0.6'], /10\.80\.0\.5 and --ip 10\.80\.0\.6 are both in subnet 10\.80\.0\.0\/24/],
    [['create', 'b', '--network', 'nope'], /no network named nope/],
    [['create', 'b', '--network', 'web', '--ip', '10.99.0.1'], /outside the subnets/],
    [['create', 'b', '--network', 'web', '--ip', '10.80.0.9'], /taken by sandbox app/],
    [['create', 'b', '--network', 'web', '--mac', '01:00:5e:00:00:01'], /multicast/],
    [['create', 'b', '--network', 'web', '--mac', 'zz:00:00:00:00:00'], /malformed/],
    [['create', '$(touch /tmp/pwned)', '--network', 'web'], /not allowed/],
    [['create', 'b"; flush ruleset', '--network', 'web'], /not allowed/],
    [['create', 'app', '--network', 'web'], /sandbox app exists already/],
    [['network', 'rm', 'web'], /in use by app/],
    [['exec', 'ghost', '--', 'true'], /no sandbox named ghost/],
    [['connect', 'nope', 'app'], /no network named nope/],
    [['disconnect', 'web', 'ghost'], /no sandbox named ghost/],
    // published ports
    [['create', 'b', '--network', 'web', '-p', '8080'], /the host port is missing/],
    [['create', 'b', '--network', 'web', '-p', '0:80'], /host port 0 is out of range/],
    [['create', 'b', '--network', 'web', '-p', '8080:65536'], /container port 65536 is out of range/],
    [['create', 'b', '--network', 'web', '-p', '70000:80'], /host port 70000 is out of range/],
    [['create', 'b', '--network', 'web', '-p', '8000-8010:80-81'], /host range has 11 port\(s\) and the container range 2/],
    [['create', 'b', '--network', 'web', '-p', '8010-8000:80'], /ends before it starts/],
    [['create', 'b', '--network', 'web', '-p', '8081:80/icmp'], /unknown protocol "icmp"/],
    [['create', 'b', '--network', 'web', '-p', 'http:80'], /is not a port number/],
    [['create', 'b', '--network', 'web', '-p', '1:2:3:4'], /too many ":"|IPv6 host address must be written in brackets/],
    [['create', 'b', '--network', 'web', '-p', '203.0.113.99:8081:80'], /203\.0\.113\.99 is not an address of this host/],
    [['create', 'b', '--network', 'web', '-p', '[::1]:8081:80'], /::1 cannot be published/],
    [['create', 'b', '--network', 'web', '-p', '8080:80'], /already published by sandbox app \(8080:80\/tcp\)/],
    [['create', 'b', '--network', 'web', '-p', '8081:80', '-p', '8081:81'], /overlaps -p 8081:80\/tcp in the same request/],
    [['create', 'b', '--network', 'closed', '-p', '8081:80'], /on no network with a way out/],
    [['port', 'add', 'ghost', '8081:80'], /no sandbox named ghost/],
    [['port', 'add', 'app', '8080:80'], /already published by sandbox app/],
    [['port', 'add', 'app', '8081:0'], /container port 0 is out of range/],
    [['port', 'rm', 'app', '9999:80'], /sandbox app has no mapping 9999:80\/tcp/],
    [['port', 'ghost'], /no sandbox named ghost/],
    // policy and labels
    [['policy', 'allow', '--from', 'bad!name', '--to', 'app'], /not a sandbox name, net:NAME, label:KEY=VALUE, a CIDR, world or host/],
    [['policy', 'allow', '--from', 'app', '--to', '10.0.0.0/33'], /not a sandbox name, net:NAME, label:KEY=VALUE, a CIDR, world or host/],
    [['policy', 'allow', '--from', 'app', '--to', '10.0.0.1/8'], /has host bits set/],
    [['policy', 'allow', '--from', 'app', '--to', 'label:tier'], /has no "="/],
    [['policy', 'allow', '--from', 'net:nope', '--to', 'app'], /no network named nope/],
    [['policy', 'allow', '--from', 'ghost', '--to', 'app'], /no sandbox named ghost/],
    [['policy', 'allow', '--from', 'app', '--to', 'world', '--port', '0'], /from 1 to 65535/],
    [['policy', 'allow', '--from', 'app', '--to', 'world', '--port', '70000/tcp'], /from 1 to 65535/],
    [['policy', 'allow', '--from', 'app', '--to', 'world', '--port', '80/gre'], /unknown protocol "gre"/],
    [['policy', 'allow', '--from', 'app', '--to', 'world', '--port', '80/icmp'], /ICMP has no ports/],
    [['policy', 'allow', '--from', 'app', '--to', 'world', '--port', '90-80'], /ends before it starts/],
    [['policy', 'deny', '--from', 'app', '--to', 'world', '--name', 'taken'], /a policy rule named taken exists already/],
    [['policy', 'deny', '--from', 'app', '--to', 'world', '--name', 'rule-7'], /reserved/],
    [['policy', 'deny', '--to', 'world'], /required option '--from <sel>' not specified/],
    [['policy', 'rm', 'nope'], /no policy rule named nope/],
    [['policy', 'check', 'ghost', 'app'], /neither a sandbox nor an address/],
    [['policy', 'apply', '/nonexistent/rules'], /cannot read \/nonexistent\/rules/],
    [['create', 'b', '--network', 'web', '--label', 'novalue'], /has no "="/],
    [['create', 'b', '--network', 'web', '--label', 'a=1', '--label', 'a=2'], /--label a is given twice/],
    [['label', 'ghost', 'a=b'], /no sandbox named ghost/],
    [['label', 'app', '=b'], /key "" is not allowed/],
    [['network', 'create', 'n3', '--subnet', '10.82.0.0/24', '--isolate', '--mtu', 'x'], /is not an MTU/],
  ];
  for (const [args, message] of cases) {
    it(`ctnet ${args.join(' ')}`, async () => {
      const before = await snapshot();
      const r = await lab.ctnet(args);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, message);
      assert.match(r.stderr, /^ctnet: /);
      assert.equal(await snapshot(), before, 'nothing changed');
    });
  }
});
