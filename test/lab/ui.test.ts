// `ctnet ui` in a real browser: Debian's Chromium driven by playwright-core. ctnetd runs in the
// lab's host namespace and listens on that namespace's 127.0.0.1 (a port the kernel picks), so
// Chromium runs there too (through nsenter: everything stays inside the lab's namespaces). The page
// loads with the lab's sandboxes, a sandbox created from the CLI appears without a reload, a
// relabel is patched in from its event's delta without fetching the graph again, the
// trace form names the policy rule that drops a denied pair, a foreign Origin gets 403 JSON, and a
// label holding HTML is shown as text and never runs.
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page, type Request } from 'playwright-core';
import { Lab } from '../../src/lab/lab.ts';

const XSS = '<img src=x onerror="window.__pwned=1">';

describe('ctnet ui in Chromium', () => {
  let lab: Lab;
  let browser: Browser | undefined;
  let page: Page;
  let url: string;
  let tmp: string;
  before(async () => {
    lab = await Lab.create();
    tmp = mkdtempSync(join(tmpdir(), 'ctnet-ui-'));
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.87.1.0/24']);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.87.2.0/24']);
    await lab.ctnetOk(['create', 'web', '--network', 'front', '--label', 'tier=web', '-p', '8080:80']);
    await lab.ctnetOk(['create', 'db', '--network', 'front', '--label', 'tier=db']);
    await lab.ctnetOk(['create', 'api', '--network', 'back']);
    await lab.ctnetOk(['policy', 'deny', '--from', 'label:tier=web', '--to', 'label:tier=db', '--port', '5432/tcp', '--name', 'web-not-db']);
    // The CLI refuses such a label; a record that got past it (another host's directory entry, an
    // older version) must still be shown as text. Written straight into the store.
    const db = new DatabaseSync(join(lab.stateDir, 'ctnet.db'));
    db.prepare('INSERT INTO labels(sandbox, key, value) VALUES (?, ?, ?)').run('api', 'note', XSS);
    db.close();
    url = (await lab.ctnetOk(['ui', '--listen', '127.0.0.1:0'])).trim();
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const wrapper = join(tmp, 'chromium');
    writeFileSync(wrapper, `#!/bin/sh\nexec nsenter --net=/run/netns/${lab.host} /usr/bin/chromium "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await chromium.launch({ executablePath: wrapper, args: ['--no-sandbox'] });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(url);
  });
  after(async () => {
    await browser?.close();
    await lab?.ctnet(['daemon', 'stop']);
    await lab?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('loads and shows the lab\'s sandboxes and networks', async () => {
    for (const name of ['web', 'db', 'api']) await page.locator(`[data-sandbox="${name}"]`).first().waitFor();
    for (const name of ['front', 'back']) await page.locator(`[data-network="${name}"]`).waitFor();
    assert.match(await page.locator('[data-sandbox="web"]').first().textContent() ?? '', /10\.87\.1\.\d+.*ports 8080:80\/tcp/);
    assert.equal(await page.locator('#status').textContent(), 'live');
  });

  it('a sandbox created from the CLI appears without a reload', async () => {
    await page.evaluate('window.marker = 42');
    await lab.ctnetOk(['create', 'cache', '--network', 'back', '--label', 'tier=cache']);
    await page.locator('[data-sandbox="cache"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.evaluate('window.marker'), 42, 'the same page: no reload');
    await lab.ctnetOk(['rm', 'cache']);
    await page.locator('[data-sandbox="cache"]').waitFor({ state: 'detached', timeout: 30_000 });
    assert.equal(await page.evaluate('window.ctnetPage.fullFetches'), 1, 'both came as deltas: the graph was fetched once, at load');
  });

  it('a relabel reaches the page as a patch of the event, without fetching the graph again', async () => {
    const fetched: string[] = [];
    const count = (r: Request) => { if (new URL(r.url()).pathname === '/api/graph') fetched.push(r.url()); };
    const patches = () => page.evaluate('window.ctnetPage.patches') as Promise<number>;
    const fullFetches = () => page.evaluate('window.ctnetPage.fullFetches') as Promise<number>;
    const full = await fullFetches();
    const before = await patches();
    await page.locator('path[data-rule="web-not-db"]').first().waitFor({ state: 'attached' });
    page.on('request', count);
    try {
      await lab.ctnetOk(['label', 'db', 'tier=store']);
      await page.locator('[data-sandbox="db"]').filter({ hasText: 'tier=store' }).first().waitFor({ timeout: 30_000 });
      // The rule's edge went with the label it selected.
      await page.locator('path[data-rule="web-not-db"]').waitFor({ state: 'detached', timeout: 30_000 });
      await lab.ctnetOk(['label', 'db', 'tier=db']);
      await page.locator('[data-sandbox="db"]').filter({ hasText: 'tier=db' }).first().waitFor({ timeout: 30_000 });
      await page.locator('path[data-rule="web-not-db"]').first().waitFor({ state: 'attached', timeout: 30_000 });
    } finally {
      page.off('request', count);
    }
    assert.deepEqual(fetched, [], 'no request for the whole graph');
    assert.equal(await fullFetches(), full);
    assert.ok(await patches() >= before + 2, 'both changes patched in from their events');
  });

  it('a sandbox joining or leaving a rule\'s selector patches in only its pairs, and the page draws the rule\'s pairs', async () => {
    const full = await page.evaluate('window.ctnetPage.fullFetches') as number;
    const pairPatches = () => page.evaluate('window.ctnetPage.pairPatches') as Promise<number>;
    const pairPatchesBefore = await pairPatches();
    const pairs = () => page.locator('path[data-rule="web-not-db"]').count();
    const until = async (n: number) => {
      for (let i = 0; i < 300 && (await pairs()) !== n; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(await pairs(), n);
    };
    await until(1);
    await lab.ctnetOk(['create', 'db2', '--network', 'front', '--label', 'tier=db']);
    await until(2); // web -> db2 (the rule sent whole: one pair came to one there was)
    await lab.ctnetOk(['create', 'db3', '--network', 'back', '--label', 'tier=db']);
    await page.locator('[data-sandbox="db3"]').first().waitFor({ timeout: 30_000 });
    await until(3); // web -> db3 came as a pair merged into the page's copy (policyEdges)
    await lab.ctnetOk(['rm', 'db2']);
    await page.locator('[data-sandbox="db2"]').waitFor({ state: 'detached', timeout: 30_000 });
    await until(2); // web -> db2 went as a pair
    await lab.ctnetOk(['rm', 'db3']);
    await until(1);
    assert.equal(await page.evaluate('window.ctnetPage.fullFetches'), full, 'every change was a patch');
    assert.ok(await pairPatches() >= pairPatchesBefore + 2, 'db3 came and db2 went as pairs of the rule, not the rule whole');
  });

  it('the trace form names the policy rule that drops a denied pair', async () => {
    await page.locator('#trace-src').fill('web');
    await page.locator('#trace-dst').fill('db:5432');
    await page.locator('#trace-dst').press('Enter'); // keyboard: Enter submits
    await page.locator('#trace-outcome').waitFor({ timeout: 60_000 });
    assert.match(await page.locator('#trace-outcome').textContent() ?? '', /^dropped by inet ctnet forward: policy: deny/);
    assert.match(await page.locator('#trace-policy').textContent() ?? '', /denied by rule web-not-db/);
    await page.locator('path[data-trace="dropped"]').waitFor();
  });

  it('selecting an object with the keyboard shows how it was built', async () => {
    await page.locator('[data-sandbox="web"]').first().focus();
    await page.keyboard.press('Enter');
    await page.locator('#selection pre').filter({ hasText: 'ip netns add' }).waitFor({ timeout: 30_000 });
    assert.match(await page.locator('#selection pre').textContent() ?? '', /add element inet ctnet ports4_any \{ tcp \. 8080 : 10\.87\.1\.\d+ \. 80 \}/);
  });

  it('a foreign Origin gets 403 JSON, an unknown object 404 JSON', async () => {
    const foreign = await lab.inHost(['curl', '-s', '-w', '\n%{http_code}', '-H', 'Origin: http://evil.example', `${url}api/graph`]);
    const [body, code] = foreign.stdout.split('\n');
    assert.equal(code, '403');
    assert.match(JSON.parse(body!).error, /origin "http:\/\/evil\.example" are refused/);
    const unknown = await lab.inHost(['curl', '-s', '-w', '\n%{http_code}', `${url}api/explain?object=sandbox:nope`]);
    assert.deepEqual(unknown.stdout.split('\n')[1], '404');
    assert.equal(JSON.parse(unknown.stdout.split('\n')[0]!).error, 'no sandbox named nope');
  });

  it('a label holding HTML is shown as text and never runs', async () => {
    await page.locator('[data-sandbox="api"]').first().click();
    await page.locator('#selection table').filter({ hasText: 'note=' }).waitFor();
    assert.ok((await page.locator('#selection').textContent())!.includes(`note=${XSS}`), 'the label, as text');
    assert.equal(await page.locator('img').count(), 0, 'no img element was made');
    assert.equal(await page.evaluate('window.__pwned'), undefined);
  });

  it('readable at phone width: one column, no sideways page scroll', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    assert.equal(overflow, 0);
    assert.ok(await page.locator('#trace-form').isVisible());
  });

  it('beyond loopback a token is required; ui again answers; --off stops serving', async () => {
    const wide = (await lab.ctnetOk(['ui', '--listen', '198.51.100.2:0'])).trim();
    const m = /^(http:\/\/198\.51\.100\.2:\d+\/)\?token=([\w-]+)$/.exec(wide);
    assert.ok(m, wide);
    const code = async (...args: string[]) => (await lab.inHost(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', ...args])).stdout;
    assert.equal(await code(`${m[1]}api/graph`), '401');
    assert.equal(await code(`${m[1]}api/graph?token=wrong`), '401');
    assert.equal(await code(`${m[1]}api/graph?token=${m[2]}`), '200');
    assert.equal(await code('-H', `Authorization: Bearer ${m[2]}`, `${m[1]}api/graph`), '200');
    assert.equal(await code(url), '000', 'the old loopback listener is closed');
    // Asked again without --listen: the same address, and the token is not printed again.
    const again = await lab.ctnet(['ui']);
    assert.equal(again.stdout.trim(), m[1]);
    assert.match(again.stderr, /needs the token printed when it was made/);
    assert.equal(await code(`${m[1]}api/graph?token=${m[2]}`), '200');
    assert.match(await lab.ctnetOk(['ui', '--off']), /no longer served/);
    await lab.ctnetOk(['daemon', 'status']); // ctnetd goes on without the page
    assert.equal(await code(`${m[1]}api/graph?token=${m[2]}`), '000');
    const bad = await lab.ctnet(['ui', '--listen', 'example.com:80']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--listen "example\.com:80" is not ADDR:PORT/);
  });
});
