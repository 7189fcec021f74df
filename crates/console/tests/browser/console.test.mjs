// The web console in a real browser: Debian's Chromium, headless, driven by Playwright
// (playwright-core, which downloads no browser). Run by crates/cli/tests/console_e2e.rs against
// a node it started, with a function it made; every step asserts what a person would see.
//
// Environment: IGNITION_URL, TENANT_KEY_ID, TENANT_SECRET (a tenant's key), OPERATOR_KEY_ID,
// OPERATOR_SECRET, TENANT (the key's tenant), CODE_ZIP (a Python function that logs an HTML
// tag), SERVER_PID (to stop and resume the node), SCREENSHOTS (a folder for 1280x800 shots),
// CHROMIUM (default /usr/bin/chromium).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const need = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = need('IGNITION_URL');
const tenant = { id: need('TENANT_KEY_ID'), secret: need('TENANT_SECRET'), name: need('TENANT') };
const operator = { id: need('OPERATOR_KEY_ID'), secret: need('OPERATOR_SECRET') };
const codeZip = need('CODE_ZIP');
const serverPid = Number(need('SERVER_PID'));
const shots = need('SCREENSHOTS');
mkdirSync(shots, { recursive: true });

const FUNCTION = 'console-hello';
const HOSTILE = '<img src=x onerror=alert(1)>';

const step = (what) => console.log(`step ${what}`);

/** The API as the CLI calls it, with a bearer token (what a colleague does elsewhere). */
async function api(method, path, key, body) {
  const resp = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${key.id}:${key.secret}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return resp;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  // Nothing a function prints may run: an alert is a failure.
  page.on('dialog', async (d) => {
    problems.push(`a dialog opened: ${d.message()}`);
    await d.dismiss();
  });
  page.on('console', (m) => {
    // A refused request (a validation error, a CSRF check) is logged by Chromium as a failed
    // resource; anything else the console prints as an error is a defect (a CSP violation).
    if (m.type() === 'error' && !/Failed to load resource|net::ERR_/.test(m.text())) {
      problems.push(`console error on ${page.url()}: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => problems.push(`script error on ${page.url()}: ${e.message}`));
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png` });
}

async function signIn(page, key) {
  await page.goto(`${base}/ui/sign-in`);
  await page.fill('#access_key_id', key.id);
  await page.fill('#secret_access_key', key.secret);
  await Promise.all([page.waitForURL(/\/ui\/functions$/), page.click('button[type=submit]')]);
}

try {
  const { context, page } = await newPage();

  step('signed-out');
  const first = await page.goto(`${base}/ui`);
  assert.match(page.url(), /\/ui\/sign-in$/, 'a signed-out visitor is sent to sign in');
  const csp = first.headers()['content-security-policy'];
  assert.ok(csp && csp.includes("script-src 'self'") && csp.includes("default-src 'none'"), `CSP: ${csp}`);
  await shot(page, '01-sign-in');

  step('wrong-key');
  await page.fill('#access_key_id', tenant.id);
  await page.fill('#secret_access_key', 'not-the-secret');
  await page.click('button[type=submit]');
  await page.waitForSelector('#sign-in-error');
  assert.match(await page.textContent('#sign-in-error'), /do not match/);
  assert.match(page.url(), /\/ui\/sign-in$/);
  await shot(page, '02-sign-in-refused');

  step('sign-in');
  await signIn(page, tenant);
  const cookie = (await context.cookies()).find((c) => c.name === 'ignition_session');
  assert.ok(cookie, 'a session cookie');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.ok(cookie.expires > Date.now() / 1000 + 3600, 'it expires, hours from now');
  assert.ok(!page.url().includes(tenant.secret), 'no secret in a URL');
  assert.match(await page.textContent('#functions'), /No functions yet/);
  assert.match(await page.textContent('#who'), new RegExp(`tenant ${tenant.name}`));

  step('deploy-refused');
  await page.click('a.button[href="/ui/deploy"]');
  await page.fill('#name', FUNCTION);
  await page.selectOption('#runtime', 'python3.11');
  await page.fill('#handler', 'handler.handler');
  await page.fill('#memory', '64');
  await page.setInputFiles('#code', codeZip);
  await page.click('#deploy-form button[type=submit]');
  await page.waitForSelector('#memory-error:not([hidden])');
  assert.match(await page.textContent('#memory-error'), /memory: 64 MiB is not between 128 and 10240 MiB/);
  assert.equal(await page.getAttribute('#memory', 'aria-invalid'), 'true');
  await shot(page, '03-deploy-refused');
  await page.fill('#memory', '128');
  await page.fill('#handler', 'missing.handler');
  await page.click('#deploy-form button[type=submit]');
  await page.waitForSelector('#handler-error:not([hidden])');
  assert.match(await page.textContent('#handler-error'), /missing\.py/);
  assert.equal(await page.isHidden('#memory-error'), true, 'the fixed field no longer complains');

  step('deploy');
  await page.fill('#handler', 'handler.handler');
  await page.fill('#env', 'GREETING=Hello');
  await Promise.all([
    page.waitForURL(new RegExp(`/ui/functions/${FUNCTION}$`), { timeout: 120000 }),
    page.click('#deploy-form button[type=submit]'),
  ]);
  assert.equal(await page.textContent('#function-name'), FUNCTION);

  step('invoke-bad-json');
  await page.fill('#payload', '{"name": ');
  await page.click('#invoke-form button[type=submit]');
  await page.waitForSelector('#payload-error:not([hidden])');
  assert.match(await page.textContent('#payload-error'), /not JSON/);

  step('invoke');
  await page.fill('#payload', '{"name": "browser"}');
  await page.click('#invoke-form button[type=submit]');
  await page.waitForSelector('#invoke-result:not([hidden])', { timeout: 180000 });
  assert.match(await page.textContent('#result-status'), /^200 · succeeded/);
  assert.match(await page.textContent('#result-body'), /Hello, browser/);
  const log = await page.textContent('#result-log');
  assert.ok(log.includes(HOSTILE), `the log tail shows the tag as text: ${log}`);
  assert.equal(await page.locator('#invoke-result img').count(), 0, 'no element made from it');
  assert.match(await page.textContent('#result-start'), /booted|restored|pool|kept/);
  assert.match(await page.textContent('#result-duration'), /ms on the node/);
  assert.ok((await page.textContent('#result-node')).length > 0);
  const requestId = (await page.textContent('#result-request')).trim();
  assert.match(requestId, /^[0-9a-f-]{36}$/);

  step('recent-and-chart');
  // The live part of the page refreshes itself: the invocation appears without a reload.
  await page.waitForSelector(`#recent tr[data-request="${requestId}"]`, { timeout: 20000 });
  const total = Number(await page.getAttribute('#chart-invocations', 'data-total'));
  assert.ok(total >= 1, `the chart counts the invocation: ${total}`);
  assert.ok(await page.locator('#chart-invocations rect[data-count]').count() >= 1, 'a bar');
  await page.waitForFunction((t) => document.getElementById('logs').textContent.includes(t), HOSTILE,
    { timeout: 20000 });
  assert.equal(await page.locator('#logs img').count(), 0, 'the followed log is text too');
  await shot(page, '04-function');
  await page.locator('#activity').scrollIntoViewIfNeeded();
  await shot(page, '04-function-activity');
  await page.locator('#logs').scrollIntoViewIfNeeded();
  await shot(page, '04-function-logs');

  step('functions-list');
  await page.goto(`${base}/ui/functions`);
  const row = page.locator(`tr[data-function="${FUNCTION}"]`);
  assert.equal(await row.locator('td').nth(1).textContent(), 'python3.11');
  assert.ok(Number(await row.locator('td.invocations').textContent()) >= 1);
  await shot(page, '05-functions');

  step('csrf');
  const forged = await page.evaluate(async (name) => {
    const r = await fetch(`/v1/functions/${name}`, { method: 'DELETE' });
    return r.status;
  }, FUNCTION);
  assert.equal(forged, 403, 'a write without the CSRF token is refused');
  assert.equal((await api('GET', `/v1/functions/${FUNCTION}`, tenant)).status, 200, 'still there');

  step('pool');
  const pool = await api('PUT', `/v1/functions/${FUNCTION}/pool`, tenant, { min_ready: 1 });
  assert.equal(pool.status, 200, await pool.text());
  const tenantNode = await page.goto(`${base}/ui/node`);
  assert.equal(tenantNode.status(), 403, "a tenant does not see the node's page");
  const op = await newPage();
  await signIn(op.page, operator);
  assert.match(await op.page.textContent('#functions'), /operator's key owns no functions/);
  await op.page.click('a[href="/ui/node"]');
  const stored = `${tenant.name}.${FUNCTION}`;
  await op.page.waitForSelector(`#pools tr[data-function="${stored}"]`, { timeout: 60000 });
  await op.page.waitForFunction(() => Number(document.getElementById('pool-ready')?.textContent) >= 1,
    null, { timeout: 90000 });
  await op.page.waitForSelector(`#pools tr[data-function="${stored}"] td:has-text("MiB PSS")`,
    { timeout: 30000 });
  await shot(op.page, '06-node');
  await op.context.close();

  step('unreachable');
  await page.goto(`${base}/ui/functions/${FUNCTION}`);
  process.kill(serverPid, 'SIGSTOP');
  try {
    await page.waitForSelector('#offline:not([hidden])', { timeout: 30000 });
    assert.match(await page.textContent('#offline'), /not answering/);
    await shot(page, '07-unreachable');
  } finally {
    process.kill(serverPid, 'SIGCONT');
  }
  await page.waitForSelector('#offline', { state: 'hidden', timeout: 30000 });

  step('deleted-elsewhere');
  assert.equal((await api('DELETE', `/v1/functions/${FUNCTION}`, tenant)).status, 204);
  const gone = await page.goto(`${base}/ui/functions/${FUNCTION}`);
  assert.equal(gone.status(), 404);
  assert.match(await page.textContent('#not-found'), new RegExp(`Function not found: ${FUNCTION}`));
  await shot(page, '08-not-found');

  step('sign-out-and-expired');
  const session = (await context.cookies()).find((c) => c.name === 'ignition_session');
  await page.goto(`${base}/ui/functions`);
  await Promise.all([page.waitForURL(/\/ui\/sign-in$/), page.click('button.link')]);
  await context.addCookies([{ ...session }]);
  await page.goto(`${base}/ui/functions`);
  assert.match(page.url(), /\/ui\/sign-in\?expired=1$/, 'a closed session returns to sign-in');
  assert.match(await page.textContent('main'), /session has expired/);

  assert.deepEqual(problems, [], 'no dialog, script error or policy violation');
  console.log('ok');
} finally {
  await browser.close();
}
