import { DatabaseSync } from 'node:sqlite';
import { buildZone } from '../src/services/dns/zone.ts';
import { Listener } from '../src/services/dns/server.ts';
import { UpstreamPool } from '../src/services/dns/upstream.ts';
const N = 100;
const zone = buildZone({ serial: 1, networks: [{ name: 'cn', internal: false, dns: true, forward: [], ready: true }],
  subnets: [{ network: 'cn', cidr: '10.99.0.0/24', gateway: '10.99.0.1' }],
  addresses: Array.from({ length: N }, (_, i) => ({ network: 'cn', sandbox: `s${i}`, ip: `10.99.0.${i + 2}` })), aliases: [], services: [] });
const db = new DatabaseSync('/tmp/dns2-prof/x.db');
db.exec('CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, x)'); db.exec('INSERT INTO events(x) VALUES (1)');
const serial = db.prepare('SELECT coalesce(max(id), 0) AS id FROM events');
const withSql = process.env.SQL === '1';
const { openSync, readSync } = await import('node:fs');
db.exec('PRAGMA journal_mode=WAL');
const fd = openSync('/tmp/dns2-prof/x.db-shm', 'r'); const b = Buffer.alloc(48);
const withShm = process.env.SQL === '2';
const r = { zone: () => { if (withSql) serial.get(); if (withShm) readSync(fd, b, 0, 48, 0); return zone; }, hostResolvers: () => [], upstream: new UpstreamPool(), log: console.error };
const l = new Listener('10.99.0.1', 'cn');
await l.open(r);
console.error('listening');
const v8 = await import('node:v8');
const mem = (w: string) => { const m = process.memoryUsage(); console.log(w, JSON.stringify({ rss: m.rss >> 20, heapTotal: m.heapTotal >> 20, heapUsed: m.heapUsed >> 20, external: m.external >> 20 }), v8.getHeapSpaceStatistics().map((x) => `${x.space_name}:${x.space_size >> 20}`).join(' ')); };
mem('before');
setTimeout(() => mem('after'), Number(process.env.SECS ?? 12) * 1000 - 500);
setTimeout(() => { l.close(); process.exit(0); }, Number(process.env.SECS ?? 12) * 1000);
