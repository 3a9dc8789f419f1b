// The table guard's reading of nft monitor (services/tableguard.ts), and ctnetd's fail-closed tables
// (nft/ruleset.ts): pure parts, without a kernel. The kernel side is test/lab/guard.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MonitorReader, renderWaits } from '../../src/services/tableguard.ts';
import { failsafeBridges, failsafeScript, fullScript, SEEN_LABEL, UNSEEN_MARK } from '../../src/nft/ruleset.ts';

/** Feeds lines; returns, per line, whether it is a loss to act on, and the transaction it ends. */
function read(lines: string[]) {
  const r = new MonitorReader();
  return lines.map((l, i) => r.line(l, i));
}

describe('table guard: reading nft monitor', () => {
  it('nft flush ruleset: a loss from its first line; it leaves both tables deleted, and names its process', () => {
    const out = read([
      'delete rule inet ctnet guard handle 4',
      'delete rule inet other forward handle 2',
      'delete chain inet ctnet forward',
      'delete table inet ctnet',
      'delete table bridge ctnet',
      '# new generation 7 by process 4242 (nft)',
    ]);
    assert.equal(out[0]!.loss, true, 'the first line is the moment to act');
    assert.equal(out[1]!.loss, false, 'another table\'s rule is not ctnet\'s');
    assert.deepEqual(out[5]!.end, { pid: 4242, process: 'nft', touched: true, added: false, deleted: ['inet ctnet', 'bridge ctnet'], firstAt: 0 });
  });

  it('a rewrite (gc: delete and write again in one transaction) is a loss until its first add, and not deleted in the end', () => {
    const out = read([
      'delete rule bridge ctnet identity handle 9',
      'delete table bridge ctnet',
      'add table bridge ctnet',
      'add chain bridge ctnet identity { type filter hook prerouting priority filter; policy accept; }',
      'delete rule inet ctnet forward handle 3',
      '# new generation 8 by process 77 (nft)',
    ]);
    assert.equal(out[0]!.loss, true, 'not known yet to be a rewrite: written once more, with the same content');
    assert.equal(out[4]!.loss, false, 'after an add of ctnet\'s, a delete is part of a rewrite');
    assert.deepEqual(out[5]!.end, { pid: 77, process: 'nft', touched: true, added: true, deleted: [], firstAt: 0 });
  });

  it('what does not delete ctnet\'s rules is no loss: elements, other tables, ctnetd\'s own tables', () => {
    const out = read([
      'add element inet ctnet endpoints4 { 10.0.0.2 . "ctbr-a" }',
      'delete element inet ctnet endpoints4 { 10.0.0.3 . "ctbr-a" }',
      'delete table inet ctnetd',
      'flush set inet ctnetd bridges',
      '# new generation 9 by process 5 (node)',
      'flush chain inet ctnet forward',
      '# new generation 10 by process 6 (nft)',
    ]);
    assert.deepEqual(out.slice(0, 4).map((x) => x.loss), [false, false, false, false]);
    assert.equal(out[4]!.end!.touched, false);
    assert.equal(out[5]!.loss, true);
    assert.deepEqual(out[6]!.end, { pid: 6, process: 'nft', touched: true, added: false, deleted: [], firstAt: 5 }, 'a new transaction starts clean');
  });
});

describe('table guard: services', () => {
  it('a service\'s rule replaced or its chain deleted is no loss to restore at once (the rendered script has the old rule), but touches the tables', () => {
    const out = read([
      'delete rule inet ctnet svc_web handle 2',
      'delete set inet ctnet __map0',
      'add rule inet ctnet svc_web meta l4proto tcp counter packets 0 bytes 0 dnat ip to numgen random mod 1 map { 0 : 10.0.0.2 . 8080 }',
      '# new generation 5 by process 11 (nft)',
      'delete element inet ctnet services4 { 10.0.0.200 . tcp . 80 }',
      'delete chain inet ctnet svc_web',
      '# new generation 6 by process 12 (nft)',
    ]);
    assert.deepEqual(out.map((x) => x.loss), [false, false, false, false, false, false, false]);
    assert.equal(out[3]!.end!.touched, true);
    assert.equal(out[6]!.end!.touched, true);
  });
});

describe('ctnetd\'s fail-closed tables', () => {
  it('owned, and dropping only what ctnet\'s tables mark as seen; ctnet\'s tables mark it', () => {
    const lines = failsafeScript(['ctbr-a', 'ctbr-b']);
    assert.ok(lines.filter((l) => /^add table /.test(l)).every((l) => l.endsWith('{ flags owner; }')), 'no other process can flush them');
    assert.ok(lines.includes('add element inet ctnetd bridges { "ctbr-a", "ctbr-b" }'));
    assert.ok(lines.includes(`add rule inet ctnetd forward ct label ${SEEN_LABEL} accept comment "seen by ctnet's forward chain"`));
    assert.ok(lines.some((l) => l.startsWith(`add rule bridge ctnetd after iifname "ctv*" meta mark ${UNSEEN_MARK} counter drop`)));
    const ctnet = fullScript([{ bridge: 'ctbr-a', internal: false, isolate: false, hostAccess: false, dns: false, subnets: [{ family: 4, cidr: '10.1.0.0/24', gateway: '10.1.0.1' }] }], []);
    assert.match(ctnet, new RegExp(`^add rule inet ctnet forward iifname @bridges ct label set ${SEEN_LABEL} `, 'm'));
    assert.match(ctnet, new RegExp(`^add rule inet ctnet input ct label set ${SEEN_LABEL} `, 'm'));
    assert.match(ctnet, /^add rule bridge ctnet identity meta mark set 0 /m, 'the identity chain clears the fail-closed mark');
    assert.deepEqual(failsafeBridges([]), ['flush set inet ctnetd bridges']);
  });

  it('the restore script\'s render waits while ctnetd holds requests (the page\'s update goes first), but at most 5 s', () => {
    assert.equal(renderWaits(0, 0), false, 'nothing held: render now');
    assert.equal(renderWaits(1, 200), true, 'a create still runs: wait');
    assert.equal(renderWaits(3, 4_999), true);
    assert.equal(renderWaits(3, 5_000), false, 'requests for 5 s on end: render anyway (a stale script is only the slow way back)');
  });
});
