// Screenshots of the live page for the docs (run by hand, as root, after scripts/build.sh):
//   scripts/node scripts/screenshots.ts
// Two labs, each with ctnetd serving the page on its own namespace's 127.0.0.1 and Chromium run in
// that namespace (nothing touches the machine's network): a dual-stack pair of networks with policy
// and a traced denied flow, and the three-tier example (examples/three-tier) applied from its file.
// Writes docs/img/ui-dual.png, ui-three-tier.png (1280x800) and ui-phone.png (390 wide).
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Page } from 'playwright-core';
import { Lab, ROOT } from '../src/lab/lab.ts';

const OUT = join(ROOT, 'docs', 'img');

async function withPage(lab: Lab, fn: (page: Page) => Promise<void>): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'ctnet-shots-'));
  const url = (await lab.ctnetOk(['ui', '--listen', '127.0.0.1:0'])).trim();
  const wrapper = join(tmp, 'chromium');
  writeFileSync(wrapper, `#!/bin/sh\nexec nsenter --net=/run/netns/${lab.host} /usr/bin/chromium "$@"\n`);
  chmodSync(wrapper, 0o755);
  const browser = await chromium.launch({ executablePath: wrapper, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page.goto(url);
    await page.locator('#status.live').waitFor();
    await fn(page);
  } finally {
    await browser.close();
    await lab.ctnet(['daemon', 'stop']);
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function trace(page: Page, src: string, dst: string): Promise<void> {
  await page.locator('#trace-src').fill(src);
  await page.locator('#trace-dst').fill(dst);
  await page.locator('#trace-go').click();
  await page.locator('#trace-outcome').waitFor({ timeout: 60_000 });
}

async function dual(): Promise<void> {
  const lab = await Lab.create();
  try {
    await lab.ctnetOk(['network', 'create', 'front', '--subnet', '10.89.1.0/24', '--subnet', 'fd00:89:1::/64']);
    await lab.ctnetOk(['network', 'create', 'back', '--subnet', '10.89.2.0/24', '--subnet', 'fd00:89:2::/64', '--internal']);
    await lab.ctnetOk(['create', 'web', '--network', 'front', '--label', 'tier=web', '-p', '8080:80']);
    await lab.ctnetOk(['create', 'web2', '--network', 'front', '--label', 'tier=web', '-p', '8081:80']);
    await lab.ctnetOk(['create', 'api', '--network', 'back', '--network', 'front', '--label', 'tier=api']);
    await lab.ctnetOk(['create', 'db', '--network', 'back', '--label', 'tier=db']);
    await lab.ctnetOk(['policy', 'allow', '--from', 'label:tier=web', '--to', 'label:tier=api', '--port', '80/tcp', '--name', 'web-to-api']);
    await lab.ctnetOk(['policy', 'deny', '--from', 'label:tier=web', '--to', 'label:tier=db', '--name', 'no-web-to-db']);
    await withPage(lab, async (page) => {
      await page.locator('[data-sandbox="db"]').waitFor();
      await trace(page, 'web', 'db:5432');
      await page.locator('[data-sandbox="web"]').first().click();
      await page.locator('#selection pre').filter({ hasText: 'ip netns add' }).waitFor();
      await page.screenshot({ path: join(OUT, 'ui-dual.png') });
      await page.setViewportSize({ width: 390, height: 844 });
      await page.screenshot({ path: join(OUT, 'ui-phone.png') });
    });
  } finally {
    await lab.destroy();
  }
}

async function threeTier(): Promise<void> {
  const lab = await Lab.create();
  try {
    await lab.ctnetOk(['apply', '-f', join(ROOT, 'examples', 'three-tier', 'three-tier.yaml')], { SERVE: Lab.serveCommand() });
    await withPage(lab, async (page) => {
      await page.locator('[data-sandbox="db"]').waitFor();
      await trace(page, 'web', 'api:80');
      await page.locator('[data-network="backend"]').click();
      await page.locator('#selection pre').filter({ hasText: 'ip link add' }).waitFor();
      await page.screenshot({ path: join(OUT, 'ui-three-tier.png') });
    });
  } finally {
    await lab.destroy();
  }
}

await dual();
await threeTier();
console.log(`wrote ${OUT}/ui-dual.png, ui-phone.png, ui-three-tier.png`);
