// End-to-end test of the chat page (web/chat.html) in headless Chromium.
//
// It starts its own PerOXO server (`peroxo serve --dev` on free ports, with a fresh SQLite
// database), opens the page as alice and bob in two separate browser contexts, and drives it as
// people would: sign in, add each other, watch presence, type, exchange messages, reload, scroll
// back through history, survive a server restart, close a tab. A second, shorter scenario runs a
// server in JWT mode: sign in with a token, and be sent back to sign-in when it expires.
//
// Run: ./run.sh (or `node --test chat.test.mjs` once `npm ci` has run and the server is built).
// Env: PEROXO_BIN (server binary; default ../../target/debug/peroxo, relative paths are taken
// from this directory), CHROMIUM_BIN (default /usr/bin/chromium). Screenshots, the servers' logs
// and the pages' consoles go to target/browser-artifacts/.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '../..');
const PEROXO_BIN = path.resolve(HERE, process.env.PEROXO_BIN ?? '../../target/debug/peroxo');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO, 'target', 'browser-artifacts');

const WAIT_MS = 15_000;           // how long any one expectation may take to come true
const RECONNECT_WAIT_MS = 40_000; // reconnecting after a server restart goes through backoff
const STEP_TIMEOUT_MS = 90_000;
const SERVER_START_MS = 30_000;
// A graceful stop closes every session with 1001 at once, then may wait out its grace period
// (30 s) for the sockets to be released; the test does not wait that long.
const SERVER_STOP_GRACE_MS = 3_000;
const JWT_SECRET = 'browser-test-secret-0123456789-abcdefghijklmnop';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
];

// Texts the scenario sends. Bob's reply is not ASCII, to check the text's round trip.
const GREETING = 'Hi Bob, how are you?';
const REPLY = 'Hello Alice! Ça va très bien, merci — et toi ?';
const BURST = Array.from({ length: 30 }, (_, i) => `Message number ${i + 1}`);
const WHILE_DOWN = 'Sent while the server was away';
const FAILS_ONCE = 'This one is refused once';
const LIMITED_ONCE = 'This one is rate limited once';

/* ------------------------------------------------------------------------------------------
 * The server
 * ---------------------------------------------------------------------------------------- */

const servers = new Set();
// Whatever happens to the test process, no server outlives it.
process.on('exit', () => { for (const child of servers) child.kill('SIGKILL'); });

// Overrides from the caller's environment (PEROXO_*, RUST_LOG) must not change the setup.
const serverEnv = Object.fromEntries(Object.entries(process.env)
  .filter(([key]) => !key.startsWith('PEROXO_') && key !== 'RUST_LOG'));

/**
 * Writes the server's config into `dir`: free ports unless `httpListen` pins one (to restart on
 * the same address), the database in `dir`, JSON logs; `jwt` switches to token sign-in.
 */
async function writeConfig(dir, { httpListen = '127.0.0.1:0', jwt = false } = {}) {
  const configPath = path.join(dir, 'peroxo.toml');
  const lines = [
    '[http]',
    `listen = ${JSON.stringify(httpListen)}`,
    '',
    '[storage]',
    'listen = "127.0.0.1:0"',
    `sqlite_path = ${JSON.stringify(path.join(dir, 'peroxo.db'))}`,
    '',
    '[log]',
    'format = "json"',
    'level = "info"',
    '',
  ];
  if (jwt) lines.push('[auth]', 'mode = "jwt"', `jwt_secret = ${JSON.stringify(JWT_SECRET)}`, 'leeway_secs = 0', '');
  await writeFile(configPath, lines.join('\n'));
  return configPath;
}

/**
 * Starts `peroxo serve` (with `--dev` unless `jwt`) and resolves with {child, addr} once it
 * logs "gateway listening". Its output goes to the stream `log`.
 */
async function startServer(dir, log, { httpListen, jwt = false } = {}) {
  const configPath = await writeConfig(dir, { httpListen, jwt });
  const args = ['serve', ...(jwt ? [] : ['--dev']), '--config', configPath];
  const child = spawn(PEROXO_BIN, args, { env: serverEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  servers.add(child);
  child.once('exit', () => servers.delete(child));
  child.stderr.on('data', (chunk) => log.write(chunk));

  return new Promise((resolve, reject) => {
    const onEarlyExit = (code, signal) =>
      fail(new Error(`the server exited early (${code ?? signal}); see the server log in ${ARTIFACTS}`));
    const fail = (error) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(error);
    };
    const timer = setTimeout(
      () => fail(new Error(`no "gateway listening" log line within ${SERVER_START_MS} ms`)), SERVER_START_MS);
    child.once('error', (error) => fail(new Error(`cannot run ${PEROXO_BIN}: ${error.message}`)));
    child.once('exit', onEarlyExit);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      log.write(`${line}\n`);
      let entry;
      try { entry = JSON.parse(line); } catch { return; }
      if (entry.fields?.message?.startsWith('gateway listening')) {
        clearTimeout(timer);
        child.off('exit', onEarlyExit);
        resolve({ child, addr: entry.fields.addr });
      }
    });
  });
}

/** SIGTERM (a graceful shutdown: sessions are closed with 1001), then SIGKILL if it lingers. */
async function stopServer(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), SERVER_STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

/** A token for `user` from `peroxo token`, signed with the JWT-mode config in `dir`. */
async function issueToken(dir, user, ttl) {
  const { stdout } = await promisify(execFile)(PEROXO_BIN,
    ['token', '--config', path.join(dir, 'peroxo.toml'), '--user', user, '--ttl', ttl], { env: serverEnv });
  return stdout.trim();
}

/* ------------------------------------------------------------------------------------------
 * The browser, and the page as a person uses it
 * ---------------------------------------------------------------------------------------- */

async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM_BIN, args: CHROMIUM_ARGS });
}

/** A page in a browser context of its own (own storage: one user per context). Its console goes
 *  to console-<name>.log; uncaught errors are collected in `pageErrors`. `setup(context)` runs
 *  before the page opens. */
async function openPage(browser, name, pageErrors, setup = async () => {}) {
  const context = await browser.newContext({ viewport: { width: 1180, height: 760 } });
  await setup(context);
  const page = await context.newPage();
  const consoleLog = createWriteStream(path.join(ARTIFACTS, `console-${name}.log`));
  page.on('console', (message) => consoleLog.write(`[${message.type()}] ${message.text()}\n`));
  page.on('pageerror', (error) => pageErrors.push(`${name}: ${error.message}`));
  return page;
}

const sel = {
  conn: (state) => `[data-testid="conn-state"][data-state="${state}"]`,
  contact: (user, presence) =>
    `[data-testid="contact"][data-user="${user}"]${presence ? `[data-presence="${presence}"]` : ''}`,
  message: (state) => `#messages [data-testid="message"]${state ? `[data-state="${state}"]` : ''}`,
};

/** Waits until `selector` (optionally containing `text`) is visible on `page`. */
async function expectVisible(page, selector, { text, timeout = WAIT_MS } = {}) {
  const locator = page.locator(selector, text ? { hasText: text } : {}).first();
  await locator.waitFor({ state: 'visible', timeout });
  return locator;
}

async function screenshot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

async function signIn(page, baseUrl, name) {
  await page.goto(baseUrl);
  await page.locator('#login-user').fill(name);
  await page.locator('#login-submit').click();
  await expectVisible(page, sel.conn('online'));
  assert.equal(await page.locator('[data-testid="me"]').textContent(), name);
}

async function addContact(page, id) {
  await page.locator('#add-contact-input').fill(id);
  await page.locator('#add-contact-submit').click();
  await expectVisible(page, sel.contact(id));
}

async function openConversation(page, id) {
  await page.locator(`${sel.contact(id)} [data-testid="open-conversation"]`).click();
  await expectVisible(page, '[data-testid="peer-name"]', { text: id });
}

async function typeAndSend(page, text) {
  await page.locator('#composer-input').fill(text);
  await page.locator('#composer-input').press('Enter');
}

/** Waits until the sender's message `text` is stored (acked) and shows ✓. */
async function expectStored(page, text) {
  const message = await expectVisible(page, sel.message('stored'), { text });
  assert.equal((await message.locator('[data-testid="msg-status"]').textContent()).trim(), '✓');
}

/** The texts of the messages shown in the open conversation, oldest first. */
async function shownTexts(page) {
  return page.locator(`${sel.message()} .text`).allTextContents();
}

async function countShown(page, text) {
  return (await shownTexts(page)).filter((shown) => shown === text).length;
}

/**
 * Puts a man in the middle of the page's WebSocket: frames pass through to the real server,
 * except the first send of each text in `refusals`, which is answered with the error frame
 * given for it instead. Every send's (text, client_msg_id) is recorded in `sends`.
 */
async function refuseSendsOnce(context, refusals, sends) {
  const refused = new Set();
  await context.routeWebSocket(/\/ws\?/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((data) => {
      const frame = JSON.parse(data);
      if (frame.type === 'send') {
        sends.push({ text: frame.text, clientMsgId: frame.client_msg_id });
        const error = refusals[frame.text];
        if (error && !refused.has(frame.text)) {
          refused.add(frame.text);
          ws.send(JSON.stringify({ type: 'error', ...error, client_msg_id: frame.client_msg_id }));
          return;
        }
      }
      server.send(data);
    });
  });
}

/** Makes `step(name, fn)`: a test that is skipped once an earlier step of its scenario failed,
 *  so that the report names the step that broke. */
function scenario() {
  let broken = false;
  const step = (name, fn) => it(name, { timeout: STEP_TIMEOUT_MS }, async (t) => {
    if (broken) {
      t.skip('an earlier step failed');
      return;
    }
    try {
      await fn();
    } catch (error) {
      broken = true;
      throw error;
    }
  });
  return { step, isBroken: () => broken };
}

/* ------------------------------------------------------------------------------------------
 * Dev mode: alice and bob. Steps share the browser and the server and run in order.
 * ---------------------------------------------------------------------------------------- */

describe('PerOXO chat page', () => {
  const { step, isBroken } = scenario();
  const pages = {};
  const pageErrors = [];
  let dir;
  let serverLog;
  let server;
  let baseUrl;
  let browser;

  const openUserPage = async (name, setup) => {
    pages[name] = await openPage(browser, name, pageErrors, setup);
    return pages[name];
  };

  before(async () => {
    // Screenshots of an earlier run (a failure's above all) would only mislead.
    await rm(ARTIFACTS, { recursive: true, force: true });
    await mkdir(ARTIFACTS, { recursive: true });
    dir = await mkdtemp(path.join(tmpdir(), 'peroxo-browser-'));
    serverLog = createWriteStream(path.join(ARTIFACTS, 'server.log'));
    server = await startServer(dir, serverLog);
    baseUrl = `http://${server.addr}/`;
    browser = await launchBrowser();
  });

  after(async () => {
    if (isBroken()) {
      for (const [name, page] of Object.entries(pages)) {
        if (!page.isClosed()) await screenshot(page, `failure-${name}`).catch(() => {});
      }
    }
    await browser?.close().catch(() => {});
    await stopServer(server?.child);
    serverLog?.end();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  step('alice and bob sign in', async () => {
    const info = await (await fetch(new URL('api/info', baseUrl))).json();
    assert.equal(info.auth_mode, 'dev');
    const alice = await openUserPage('alice');
    await alice.goto(baseUrl);
    await expectVisible(alice, '#login-user');
    await screenshot(alice, '01-sign-in');
    await signIn(alice, baseUrl, 'alice');
    await signIn(await openUserPage('bob'), baseUrl, 'bob');
  });

  step('each adds the other and sees them online', async () => {
    const { alice, bob } = pages;
    await addContact(alice, 'bob');
    await addContact(bob, 'alice');
    await expectVisible(alice, sel.contact('bob', 'online'));
    await expectVisible(bob, sel.contact('alice', 'online'));
    await expectVisible(alice, '[data-testid="peer-presence"]', { text: 'Online' });
    await screenshot(alice, '02-contacts-online');
  });

  step('bob sees alice typing', async () => {
    const { alice, bob } = pages;
    await openConversation(bob, 'alice');
    await openConversation(alice, 'bob');
    await alice.locator('#composer-input').fill(GREETING);
    await expectVisible(bob, '[data-testid="typing"]', { text: 'alice is typing' });
    await expectVisible(bob, `${sel.contact('alice')} .contact-sub`, { text: 'typing' });
    await screenshot(bob, '03-typing-indicator');
  });

  step('they exchange messages both ways', async () => {
    const { alice, bob } = pages;
    await alice.locator('#composer-input').press('Enter');
    await expectStored(alice, GREETING);
    await expectVisible(bob, `${sel.message('received')}[data-from="alice"]`, { text: GREETING });

    await typeAndSend(bob, REPLY);
    await expectStored(bob, REPLY);
    await expectVisible(alice, `${sel.message('received')}[data-from="bob"]`, { text: REPLY });
    await screenshot(alice, '04-conversation-alice');
    await screenshot(bob, '04-conversation-bob');
  });

  step('a burst of messages arrives in order, each once', async () => {
    const { alice, bob } = pages;
    for (const text of BURST) await typeAndSend(alice, text);
    await expectStored(alice, BURST.at(-1));
    await alice.waitForFunction(() => !document.querySelector('#messages [data-state="sending"]'), null,
      { timeout: WAIT_MS });
    await expectVisible(bob, sel.message('received'), { text: BURST.at(-1) });
    assert.deepEqual(await shownTexts(alice), [GREETING, REPLY, ...BURST]);
    assert.deepEqual(await shownTexts(bob), [GREETING, REPLY, ...BURST]);
  });

  step('bob reloads and scrolls back through the history', async () => {
    const { bob } = pages;
    await bob.reload();
    await expectVisible(bob, sel.conn('online'));
    await expectVisible(bob, sel.contact('alice', 'online'));
    await openConversation(bob, 'alice');
    // The newest page (30 messages) does not reach back to the first two.
    await expectVisible(bob, sel.message(), { text: BURST.at(-1) });
    await expectVisible(bob, '[data-testid="load-older"]');
    assert.deepEqual(await shownTexts(bob), BURST);
    // Scrolling to the top loads the older page.
    await bob.locator('#scroller').evaluate((scroller) => { scroller.scrollTop = 0; });
    await expectVisible(bob, sel.message(), { text: GREETING });
    await expectVisible(bob, '#history-status', { text: 'Start of the conversation' });
    assert.deepEqual(await shownTexts(bob), [GREETING, REPLY, ...BURST]);
    await expectStored(bob, REPLY);
    await screenshot(bob, '05-history-after-reload');
  });

  step('a message sent while the server is down is delivered once after it restarts', async () => {
    const { alice, bob } = pages;
    const { addr } = server;
    await stopServer(server.child);
    await expectVisible(alice, sel.conn('reconnecting'));
    await expectVisible(bob, sel.conn('reconnecting'));
    await typeAndSend(alice, WHILE_DOWN);
    await expectVisible(alice, sel.message('sending'), { text: WHILE_DOWN });
    await screenshot(alice, '06-queued-while-offline');

    server = await startServer(dir, serverLog, { httpListen: addr });
    await expectVisible(alice, sel.conn('online'), { timeout: RECONNECT_WAIT_MS });
    await expectVisible(bob, sel.conn('online'), { timeout: RECONNECT_WAIT_MS });
    await expectStored(alice, WHILE_DOWN);
    await expectVisible(bob, sel.message('received'), { text: WHILE_DOWN });
    await typeAndSend(bob, 'Got it');
    await expectVisible(alice, sel.message('received'), { text: 'Got it' });
    assert.equal(await countShown(alice, WHILE_DOWN), 1);
    assert.equal(await countShown(bob, WHILE_DOWN), 1);
    await screenshot(alice, '07-after-restart');
  });

  step('a refused send offers Retry; a retryable refusal is retried by itself', async () => {
    const { alice } = pages;
    const sends = [];
    const erin = await openUserPage('erin', (context) => refuseSendsOnce(context, {
      [FAILS_ONCE]: { code: 'bad_request', message: 'refused by the test', retryable: false },
      [LIMITED_ONCE]: { code: 'rate_limited', message: 'slow down (test)', retryable: true },
    }, sends));
    await signIn(erin, baseUrl, 'erin');
    await addContact(erin, 'alice');
    await typeAndSend(erin, FAILS_ONCE);
    const failed = await expectVisible(erin, sel.message('failed'), { text: FAILS_ONCE });
    await expectVisible(erin, `${sel.message('failed')} [data-testid="retry"]`);
    await screenshot(erin, '08-failed-send');
    await failed.locator('[data-testid="retry"]').click();
    await expectStored(erin, FAILS_ONCE);
    await typeAndSend(erin, LIMITED_ONCE);
    await expectStored(erin, LIMITED_ONCE);
    // Each resend kept its message's client_msg_id, so nothing can be stored twice.
    for (const text of [FAILS_ONCE, LIMITED_ONCE]) {
      const ids = sends.filter((send) => send.text === text).map((send) => send.clientMsgId);
      assert.equal(ids.length, 2, `${text} sent ${ids.length} times`);
      assert.equal(ids[0], ids[1]);
    }
    // Alice, talking to bob, gets erin as a new contact with two unread messages.
    await expectVisible(alice, `${sel.contact('erin', 'online')}[data-unread="2"]`);
    await alice.locator(`${sel.contact('erin')} [data-testid="open-conversation"]`).click();
    await expectVisible(alice, sel.message('received'), { text: LIMITED_ONCE });
    assert.deepEqual(await shownTexts(alice), [FAILS_ONCE, LIMITED_ONCE]);
    await expectVisible(alice, `${sel.contact('erin')}[data-unread="0"]`);
    await erin.context().close();
    await openConversation(alice, 'bob');
  });

  step('alice sees bob go offline when he closes the page', async () => {
    const { alice, bob } = pages;
    await bob.context().close();
    await expectVisible(alice, sel.contact('bob', 'offline'));
    await expectVisible(alice, '[data-testid="peer-presence"]', { text: 'Offline' });
    await screenshot(alice, '09-bob-offline');
  });

  step('no page threw an uncaught error', async () => {
    assert.deepEqual(pageErrors, []);
  });
});

/* ------------------------------------------------------------------------------------------
 * JWT mode: carol signs in with a token.
 * ---------------------------------------------------------------------------------------- */

describe('PerOXO chat page in JWT mode', () => {
  const { step, isBroken } = scenario();
  const pageErrors = [];
  let dir;
  let serverLog;
  let server;
  let browser;
  let page;

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    dir = await mkdtemp(path.join(tmpdir(), 'peroxo-browser-jwt-'));
    serverLog = createWriteStream(path.join(ARTIFACTS, 'server-jwt.log'));
    server = await startServer(dir, serverLog, { jwt: true });
    browser = await launchBrowser();
    page = await openPage(browser, 'carol', pageErrors);
  });

  after(async () => {
    if (isBroken() && page && !page.isClosed()) await screenshot(page, 'failure-carol').catch(() => {});
    await browser?.close().catch(() => {});
    await stopServer(server?.child);
    serverLog?.end();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  step('asks for a token and refuses one that is not a JWT', async () => {
    await page.goto(`http://${server.addr}/`);
    await expectVisible(page, '#login-token');
    assert.equal(await page.locator('#login-user').isVisible(), false);
    await page.locator('#login-token').fill('not a token');
    await page.locator('#login-submit').click();
    await expectVisible(page, '#login-error', { text: 'does not look like a token' });
  });

  step('signs in with a token', async () => {
    await page.locator('#login-token').fill(await issueToken(dir, 'carol', '1h'));
    await page.locator('#login-submit').click();
    await expectVisible(page, sel.conn('online'));
    assert.equal(await page.locator('[data-testid="me"]').textContent(), 'carol');
    await screenshot(page, '10-jwt-signed-in');
  });

  step('goes back to sign-in when the token expires (close code 4001)', async () => {
    await page.locator('#sign-out').click();
    await page.locator('#login-token').fill(await issueToken(dir, 'carol', '3s'));
    await page.locator('#login-submit').click();
    await expectVisible(page, sel.conn('online'));
    await expectVisible(page, '#login-error', { text: 'token has expired' });
    await screenshot(page, '11-jwt-token-expired');
  });

  step('no page threw an uncaught error', async () => {
    assert.deepEqual(pageErrors, []);
  });
});
