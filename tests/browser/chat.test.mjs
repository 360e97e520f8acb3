// End-to-end test of the chat page (web/chat.html) in headless Chromium.
//
// It starts its own PerOXO server (`peroxo serve --dev` on free ports, with a fresh SQLite
// database), opens the page as alice and bob in two separate browser contexts, and drives it as
// people would: sign in, add each other, watch presence, type, exchange messages, reload, scroll
// back through history, survive a server restart, keep a refused send (with Retry) across a
// reload, send what the page before the SDK had queued, close a tab. A second scenario, on a
// server of its own, has alice, bob and carol in three contexts and alice again in a fourth (a
// second device): a group with sender names, previews and unread badges, who is typing, members added,
// removed, promoted and leaving, read ticks in a direct conversation, read state moving on the
// other device, "mark unread", a reload that keeps the list while the server is out of reach
// (and a sync that brings what happened meanwhile), and a new browser that reads the list from
// the server. A third, shorter scenario runs a server in JWT mode: sign in with a token, and be
// sent back to sign-in when it expires. A fourth, on protocol 3: a reply with its quote, an edit,
// a delete (a tombstone for both users), reactions counted and taken back, and a second device
// of bob that was away and catches up on all of it when it comes back.
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
const OLD_PAGE_QUEUED = 'Queued before the page was upgraded';

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
  group: (title) => `[data-testid="group"][data-title="${title}"]`,
  member: (user, role) => `[data-testid="member"][data-user="${user}"]${role ? `[data-role="${role}"]` : ''}`,
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

async function createGroup(page, title, members) {
  await page.locator('[data-testid="new-group"]').click();
  await page.locator('#group-title').fill(title);
  await page.locator('#group-members').fill(members);
  await page.locator('#group-create').click();
}

async function openGroup(page, title) {
  await page.locator(`${sel.group(title)} [data-testid="open-conversation"]`).click();
  await expectVisible(page, '[data-testid="peer-name"]', { text: title });
}

/** The conversation ids of the list, top first. */
async function listOrder(page) {
  return page.locator('#contacts > li').evaluateAll((nodes) => nodes.map((node) => node.dataset.conversationId));
}

async function groupId(page, title) {
  return page.locator(sel.group(title)).getAttribute('data-conversation-id');
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

/**
 * Lets the page's WebSocket through to the server while `gate.open`, and otherwise closes it at
 * once with 1013, as a server that cannot take the connection would.
 */
async function gateWebSocket(context, gate) {
  await context.routeWebSocket(/\/ws\?/, (ws) => {
    if (gate.open) ws.connectToServer();
    else ws.close({ code: 1013, reason: 'closed by the test' });
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

  step('a refused send offers Retry, also after a reload; a retryable refusal is retried by itself', async () => {
    const { alice } = pages;
    const sends = [];
    const erin = await openUserPage('erin', (context) => refuseSendsOnce(context, {
      [FAILS_ONCE]: { code: 'bad_request', message: 'refused by the test', retryable: false },
      [LIMITED_ONCE]: { code: 'rate_limited', message: 'slow down (test)', retryable: true },
    }, sends));
    await signIn(erin, baseUrl, 'erin');
    await addContact(erin, 'alice');
    await typeAndSend(erin, FAILS_ONCE);
    await expectVisible(erin, sel.message('failed'), { text: FAILS_ONCE });
    await expectVisible(erin, `${sel.message('failed')} [data-testid="retry"]`);
    await screenshot(erin, '08-failed-send');
    // The refused send is kept across a reload, and still offers Retry.
    await erin.reload();
    await expectVisible(erin, sel.conn('online'));
    await openConversation(erin, 'alice');
    const failed = await expectVisible(erin, sel.message('failed'), { text: FAILS_ONCE });
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

  step('a send the page before the SDK had queued goes out once after the upgrade', async () => {
    const { alice } = pages;
    const queued = { clientMsgId: 'queued-by-the-old-page', conversationId: 'alice:frank', text: OLD_PAGE_QUEUED, createdAt: Date.now() };
    const frank = await openUserPage('frank', (context) => context.addInitScript(([key, value]) => {
      // What the old page left in this tab's sessionStorage, once (not again on later loads).
      if (sessionStorage.getItem('test:seeded')) return;
      sessionStorage.setItem('test:seeded', '1');
      sessionStorage.setItem(key, value);
    }, ['peroxo:v1:outbox:default:frank', JSON.stringify({ sends: [queued], groups: [] })]));
    await signIn(frank, baseUrl, 'frank');
    await expectVisible(frank, sel.contact('alice'));
    await openConversation(frank, 'alice');
    await expectStored(frank, OLD_PAGE_QUEUED);
    const message = frank.locator(sel.message('stored'), { hasText: OLD_PAGE_QUEUED });
    assert.equal(await message.getAttribute('data-client-msg-id'), queued.clientMsgId);
    await expectVisible(alice, `${sel.contact('frank')}[data-unread="1"]`);
    await alice.locator(`${sel.contact('frank')} [data-testid="open-conversation"]`).click();
    await expectVisible(alice, sel.message('received'), { text: OLD_PAGE_QUEUED });
    assert.deepEqual(await shownTexts(alice), [OLD_PAGE_QUEUED]);
    await frank.context().close();
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
 * Conversations (protocol 2): alice, bob and carol in a group, alice's direct conversation with
 * bob, and alice's second device. Steps share the browser and the server and run in order.
 * ---------------------------------------------------------------------------------------- */

const TEAM = 'Team';
const TO_THE_TEAM = 'Hello team, welcome!';
const BOB_TO_THE_TEAM = 'Hi all, bob here';
const ARE_YOU_THERE = 'Are you there, Bob?';
const PING = 'Ping from bob';
const AFTER_RELOAD = 'Sent after the reload';
const TEAM_RENAMED = 'Team B';
const FROM_THE_PHONE = 'Hello from my phone';

describe('PerOXO chat page: groups, the conversation list and read state', () => {
  const { step, isBroken } = scenario();
  const pages = {};
  const pageErrors = [];
  // The WebSocket of alice's second device goes through while this is open (see gateWebSocket).
  const phoneGate = { open: true };
  let dir;
  let serverLog;
  let server;
  let baseUrl;
  let browser;

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    dir = await mkdtemp(path.join(tmpdir(), 'peroxo-browser-groups-'));
    serverLog = createWriteStream(path.join(ARTIFACTS, 'server-groups.log'));
    server = await startServer(dir, serverLog);
    baseUrl = `http://${server.addr}/`;
    browser = await launchBrowser();
  });

  after(async () => {
    if (isBroken()) {
      for (const [name, page] of Object.entries(pages)) {
        if (!page.isClosed()) await screenshot(page, `failure-groups-${name}`).catch(() => {});
      }
    }
    await browser?.close().catch(() => {});
    await stopServer(server?.child);
    serverLog?.end();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  step('alice, bob and carol sign in, and alice on a second device', async () => {
    for (const name of ['alice', 'bob', 'carol']) {
      pages[name] = await openPage(browser, `groups-${name}`, pageErrors);
      await signIn(pages[name], baseUrl, name);
    }
    pages.phone = await openPage(browser, 'groups-alice-phone', pageErrors, (context) => gateWebSocket(context, phoneGate));
    await signIn(pages.phone, baseUrl, 'alice');
  });

  step('alice creates a group with bob and carol, and it reaches every list', async () => {
    const { alice, bob, carol, phone } = pages;
    await createGroup(alice, TEAM, 'bob, carol');
    await expectVisible(alice, '[data-testid="peer-name"]', { text: TEAM });
    await expectVisible(alice, '[data-testid="peer-presence"]', { text: '3 members' });
    for (const page of [alice, bob, carol, phone]) {
      await expectVisible(page, sel.group(TEAM));
      await expectVisible(page, `${sel.group(TEAM)} [data-testid="preview"]`, { text: '3 members' });
    }
    await screenshot(alice, '12-group-created');
  });

  step('group messages reach the list as previews and unread badges, and show their senders', async () => {
    const { alice, bob, carol } = pages;
    await typeAndSend(alice, TO_THE_TEAM);
    await expectStored(alice, TO_THE_TEAM);
    for (const page of [bob, carol]) {
      await expectVisible(page, `${sel.group(TEAM)}[data-unread="1"]`);
      await expectVisible(page, `${sel.group(TEAM)} [data-testid="preview"]`, { text: `alice: ${TO_THE_TEAM}` });
      await expectVisible(page, '[data-testid="total-unread"]', { text: '1' });
      assert.equal(await page.title(), '(1) PerOXO');
    }
    await screenshot(carol, '13-group-unread');

    await openGroup(bob, TEAM);
    await expectVisible(bob, `${sel.message('received')}[data-from="alice"] [data-testid="sender"]`, { text: 'alice' });
    await expectVisible(bob, `${sel.group(TEAM)}[data-unread="0"]`);
    await typeAndSend(bob, BOB_TO_THE_TEAM);
    await expectStored(bob, BOB_TO_THE_TEAM);
    await expectVisible(alice, `${sel.message('received')}[data-from="bob"]`, { text: BOB_TO_THE_TEAM });
    await expectVisible(alice, `${sel.group(TEAM)} [data-testid="preview"]`, { text: `bob: ${BOB_TO_THE_TEAM}` });
    // alice has the group open: what arrives there is read at once.
    await expectVisible(alice, `${sel.group(TEAM)}[data-unread="0"]`);

    await expectVisible(carol, `${sel.group(TEAM)}[data-unread="2"]`);
    assert.equal(await carol.title(), '(2) PerOXO');
    await openGroup(carol, TEAM);
    await expectVisible(carol, sel.message('received'), { text: BOB_TO_THE_TEAM });
    assert.deepEqual(await shownTexts(carol), [TO_THE_TEAM, BOB_TO_THE_TEAM]);
    assert.deepEqual(await carol.locator(`${sel.message()} [data-testid="sender"]`).allTextContents(), ['alice', 'bob']);
    await expectVisible(carol, `${sel.group(TEAM)}[data-unread="0"]`);
    await carol.waitForFunction(() => document.title === 'PerOXO', null, { timeout: WAIT_MS });
    await screenshot(carol, '14-group-conversation');
  });

  step('typing in the group shows who is typing', async () => {
    const { alice, carol } = pages;
    await carol.locator('#composer-input').fill('Let me think');
    await expectVisible(alice, '[data-testid="typing"]', { text: 'carol is typing' });
    await expectVisible(alice, `${sel.group(TEAM)} [data-testid="preview"]`, { text: 'carol is typing' });
    await carol.locator('#composer-input').fill('');
  });

  step('the members panel shows roles, and the owner adds, removes and promotes members', async () => {
    const { alice, bob } = pages;
    await alice.locator('[data-testid="toggle-members"]').click();
    await expectVisible(alice, sel.member('alice', 'owner'));
    await expectVisible(alice, sel.member('bob', 'member'));
    await expectVisible(alice, sel.member('carol', 'member'));

    await alice.locator('#add-members-input').fill('dave');
    await alice.locator('[data-testid="add-members"]').click();
    await expectVisible(alice, sel.member('dave', 'member'));
    await expectVisible(bob, '[data-testid="peer-presence"]', { text: '4 members' });
    await screenshot(alice, '15-members-panel');

    await alice.locator(`${sel.member('dave')} [data-testid="remove-member"]`).click();
    await alice.locator(sel.member('dave')).waitFor({ state: 'detached', timeout: WAIT_MS });
    await expectVisible(bob, '[data-testid="peer-presence"]', { text: '3 members' });

    await alice.locator(`${sel.member('bob')} [data-testid="set-role"]`).click();
    await expectVisible(alice, sel.member('bob', 'admin'));
    await expectVisible(bob, '[data-testid="peer-presence"]', { text: 'you are an admin' });
  });

  step('a member who leaves loses the group, and the others see the member gone', async () => {
    const { alice, bob, carol } = pages;
    await carol.locator('[data-testid="toggle-members"]').click();
    await expectVisible(carol, sel.member('alice', 'owner'));
    await carol.locator('[data-testid="leave-group"]').click();
    await carol.locator(sel.group(TEAM)).waitFor({ state: 'detached', timeout: WAIT_MS });
    await expectVisible(carol, '#conv-empty');
    await alice.locator(sel.member('carol')).waitFor({ state: 'detached', timeout: WAIT_MS });
    await expectVisible(alice, '[data-testid="peer-presence"]', { text: '2 members' });
    await expectVisible(bob, '[data-testid="peer-presence"]', { text: '2 members' });
  });

  step('a direct message shows a read tick once the peer has read it', async () => {
    const { alice, bob } = pages;
    await addContact(alice, 'bob');
    await typeAndSend(alice, ARE_YOU_THERE);
    await expectStored(alice, ARE_YOU_THERE);
    const sent = alice.locator(sel.message('stored'), { hasText: ARE_YOU_THERE });
    assert.equal(await sent.getAttribute('data-read'), 'false');
    assert.equal(await sent.locator('[data-testid="read-tick"]').count(), 0);

    // bob, in the group, gets the direct conversation on top of his list, unread.
    await expectVisible(bob, `${sel.contact('alice')}[data-unread="1"]`);
    await expectVisible(bob, `${sel.contact('alice')} [data-testid="preview"]`, { text: ARE_YOU_THERE });
    assert.deepEqual(await listOrder(bob), ['alice:bob', await groupId(bob, TEAM)]);

    await openConversation(bob, 'alice');
    await expectVisible(alice, `${sel.message('stored')}[data-read="true"] [data-testid="read-tick"]`);
    await screenshot(alice, '16-read-tick');
  });

  step('a second device of the same user sees the read state move', async () => {
    const { alice, bob, phone } = pages;
    await openGroup(alice, TEAM);
    await typeAndSend(bob, PING);
    for (const page of [alice, phone]) {
      await expectVisible(page, `${sel.contact('bob')}[data-unread="1"]`);
      await expectVisible(page, `${sel.contact('bob')} [data-testid="preview"]`, { text: PING });
    }
    assert.equal(await phone.title(), '(1) PerOXO');
    await screenshot(phone, '17-second-device-unread');

    await openConversation(alice, 'bob');
    await expectVisible(alice, sel.message('received'), { text: PING });
    await expectVisible(phone, `${sel.contact('bob')}[data-unread="0"]`);
    await phone.waitForFunction(() => document.title === 'PerOXO', null, { timeout: WAIT_MS });
    assert.equal(await phone.locator('[data-testid="total-unread"]').isVisible(), false);
  });

  step('mark unread makes the conversation unread on every device', async () => {
    const { alice, phone } = pages;
    await alice.locator('[data-testid="mark-unread"]').click();
    await expectVisible(alice, '#conv-empty');
    for (const page of [alice, phone]) {
      await expectVisible(page, `${sel.contact('bob')}[data-unread="1"]`);
      await page.waitForFunction(() => document.title === '(1) PerOXO', null, { timeout: WAIT_MS });
    }
    await screenshot(alice, '18-marked-unread');
  });

  step('a reload keeps the list, its unread counts and the stream position', async () => {
    const { alice, bob, phone } = pages;
    // The stream position the SDK keeps in its IndexedDB store (one database per user).
    const savedSeq = () => phone.evaluate((name) => new Promise((resolve, reject) => {
      const open = indexedDB.open(name);
      open.onerror = () => reject(open.error);
      open.onsuccess = () => {
        const read = open.result.transaction('meta').objectStore('meta').get('last_seq');
        read.onerror = () => reject(read.error);
        read.onsuccess = () => { open.result.close(); resolve(read.result ?? 0); };
      };
    }), 'peroxo:default:alice');
    const before = await savedSeq();
    assert.ok(before > 0, `saved lastSeq ${before}`);

    // Reloaded while the server cannot be reached: the list comes from what the page saved.
    phoneGate.open = false;
    await phone.reload();
    await expectVisible(phone, sel.conn('reconnecting'));
    await expectVisible(phone, sel.group(TEAM));
    await expectVisible(phone, `${sel.contact('bob')}[data-unread="1"]`);
    await expectVisible(phone, `${sel.contact('bob')} [data-testid="preview"]`, { text: PING });
    assert.equal(await savedSeq(), before);
    await screenshot(phone, '19-reloaded-offline');

    // Meanwhile a message and a group event enter alice's stream.
    await typeAndSend(bob, AFTER_RELOAD);
    await openGroup(alice, TEAM);
    await alice.locator('[data-testid="toggle-members"]').click();
    await alice.locator('#rename-input').fill(TEAM_RENAMED);
    await alice.locator('#rename-submit').click();
    await expectVisible(alice, '[data-testid="peer-name"]', { text: TEAM_RENAMED });
    await expectVisible(bob, sel.group(TEAM_RENAMED));

    // The page's next attempt (its backoff is a few seconds at most by now) gets through, and
    // its sync brings both.
    phoneGate.open = true;
    await expectVisible(phone, sel.conn('online'), { timeout: RECONNECT_WAIT_MS });
    await expectVisible(phone, `${sel.contact('bob')}[data-unread="2"]`);
    await expectVisible(phone, `${sel.contact('bob')} [data-testid="preview"]`, { text: AFTER_RELOAD });
    await expectVisible(phone, sel.group(TEAM_RENAMED));
    assert.ok(await savedSeq() > before);

    await openGroup(phone, TEAM_RENAMED);
    await expectVisible(phone, sel.message('received'), { text: BOB_TO_THE_TEAM });
    assert.deepEqual(await shownTexts(phone), [TO_THE_TEAM, BOB_TO_THE_TEAM]);
    await expectVisible(phone, `${sel.message()}[data-from="bob"] [data-testid="sender"]`, { text: 'bob' });
  });

  step('a new browser reads the list, with its unread counts and previews, from the server', async () => {
    const { alice, bob, phone } = pages;
    // bob is in his conversation with alice; alice writes to the group from her phone.
    await typeAndSend(phone, FROM_THE_PHONE);
    await expectStored(phone, FROM_THE_PHONE);
    await expectVisible(bob, `${sel.group(TEAM_RENAMED)}[data-unread="1"]`);
    // Her other device shows the message as her own.
    await expectVisible(alice, `${sel.message('stored')}[data-from="alice"]`, { text: FROM_THE_PHONE });
    await expectVisible(alice, `${sel.group(TEAM_RENAMED)} [data-testid="preview"]`, { text: `You: ${FROM_THE_PHONE}` });

    const fresh = await openPage(browser, 'groups-bob-new-browser', pageErrors);
    pages.bobNew = fresh;
    await signIn(fresh, baseUrl, 'bob');
    await expectVisible(fresh, `${sel.group(TEAM_RENAMED)}[data-unread="1"]`);
    await expectVisible(fresh, `${sel.group(TEAM_RENAMED)} [data-testid="preview"]`, { text: `alice: ${FROM_THE_PHONE}` });
    await expectVisible(fresh, `${sel.contact('alice')}[data-unread="0"]`);
    await expectVisible(fresh, `${sel.contact('alice')} [data-testid="preview"]`, { text: `You: ${AFTER_RELOAD}` });
    assert.deepEqual(await listOrder(fresh), [await groupId(bob, TEAM_RENAMED), 'alice:bob']);
    assert.equal(await fresh.title(), '(1) PerOXO');
    await screenshot(fresh, '20-new-browser-list');
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

/* ------------------------------------------------------------------------------------------
 * Protocol 3: what happens to a message after it is sent. alice and bob, and bob again on a
 * desk computer that goes away for a while and catches up when it comes back.
 * ---------------------------------------------------------------------------------------- */

const SEE_YOU = 'See you at 5 at the statoin';
const SEE_YOU_FIXED = 'See you at 5 at the station';
const SEE_YOU_LATER = 'See you at 6 at the station';
const ON_MY_WAY = 'Great, on my way';
const WRONG_CHAT = 'Oops, this was for someone else';
const WRONG_AGAIN = 'Wrong chat again, sorry';

/**
 * Lets the page's WebSocket through to the server while `plug.in`; `unplug(plug)` closes the
 * open ones (1001, as a device leaving) and every later attempt is closed at once with 1013.
 */
async function pluggedWebSocket(context, plug) {
  plug.routes = new Set();
  await context.routeWebSocket(/\/ws\?/, (ws) => {
    if (!plug.in) {
      ws.close({ code: 1013, reason: 'away' });
      return;
    }
    plug.routes.add(ws);
    ws.connectToServer();
  });
}

async function unplug(plug) {
  plug.in = false;
  for (const ws of plug.routes) await ws.close({ code: 1001, reason: 'away' }).catch(() => {});
  plug.routes.clear();
}

/** The message of the open conversation that shows `text` (or, once deleted, has that id). */
const messageWith = (page, text) => page.locator(sel.message(), { hasText: text }).first();
const messageById = (page, id) => page.locator(`${sel.message()}[data-message-id="${id}"]`);

/** Runs a message's tool (reply, react, edit, delete), shown when the pointer is on it. */
async function messageTool(message, tool) {
  await message.hover();
  await message.locator(`[data-testid="${tool}"]`).click();
}

/** The reactions a message shows, as `emoji count` with a `*` on the user's own. */
async function reactionsOf(message) {
  return message.locator('[data-testid="reaction"]').evaluateAll((nodes) =>
    nodes.map((n) => `${n.dataset.emoji} ${n.dataset.count}${n.getAttribute('aria-pressed') === 'true' ? '*' : ''}`));
}

/** Waits until `read()` gives `expected` (deep equality), failing with the last value seen. */
async function eventually(read, expected, what, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let seen;
  for (;;) {
    seen = await read();
    try {
      assert.deepEqual(seen, expected);
      return;
    } catch {
      if (Date.now() > deadline) assert.fail(`${what}: expected ${JSON.stringify(expected)}, saw ${JSON.stringify(seen)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('PerOXO chat page: replies, edits, deletes and reactions', () => {
  const { step, isBroken } = scenario();
  const pages = {};
  const pageErrors = [];
  // The WebSocket of bob's desk goes through while this is plugged in (see pluggedWebSocket).
  const deskPlug = { in: true };
  const ids = {};
  let dir;
  let serverLog;
  let server;
  let baseUrl;
  let browser;

  before(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    dir = await mkdtemp(path.join(tmpdir(), 'peroxo-browser-lifecycle-'));
    serverLog = createWriteStream(path.join(ARTIFACTS, 'server-lifecycle.log'));
    server = await startServer(dir, serverLog);
    baseUrl = `http://${server.addr}/`;
    browser = await launchBrowser();
  });

  after(async () => {
    if (isBroken()) {
      for (const [name, page] of Object.entries(pages)) {
        if (!page.isClosed()) await screenshot(page, `failure-lifecycle-${name}`).catch(() => {});
      }
    }
    await browser?.close().catch(() => {});
    await stopServer(server?.child);
    serverLog?.end();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  step('alice writes to bob, who reads it on his laptop and his desk', async () => {
    pages.alice = await openPage(browser, 'lifecycle-alice', pageErrors);
    pages.bob = await openPage(browser, 'lifecycle-bob', pageErrors);
    pages.desk = await openPage(browser, 'lifecycle-bob-desk', pageErrors, (context) => pluggedWebSocket(context, deskPlug));
    const { alice, bob, desk } = pages;
    for (const [page, name] of [[alice, 'alice'], [bob, 'bob'], [desk, 'bob']]) await signIn(page, baseUrl, name);
    await addContact(alice, 'bob');
    await openConversation(alice, 'bob');
    await typeAndSend(alice, SEE_YOU);
    await expectStored(alice, SEE_YOU);
    ids.seeYou = await messageWith(alice, SEE_YOU).getAttribute('data-message-id');
    await openConversation(bob, 'alice');
    await expectVisible(bob, sel.message('received'), { text: SEE_YOU });
    // The desk stays on the list: the message is in its store all the same.
    await expectVisible(desk, `${sel.contact('alice')}[data-unread="1"]`);
  });

  step('bob replies with a quote, which both see above the reply', async () => {
    const { alice, bob } = pages;
    await messageTool(messageWith(bob, SEE_YOU), 'reply');
    await expectVisible(bob, '[data-testid="composer-context"]', { text: `Replying to alice: ${SEE_YOU}` });
    await typeAndSend(bob, ON_MY_WAY);
    await expectStored(bob, ON_MY_WAY);
    assert.equal(await bob.locator('[data-testid="composer-context"]').isVisible(), false);
    for (const page of [alice, bob]) {
      const reply = messageWith(page, ON_MY_WAY);
      await expectVisible(page, `${sel.message()}:has-text("${ON_MY_WAY}") [data-testid="quote"]`, { text: SEE_YOU });
      assert.equal(await reply.locator('[data-testid="quote"]').getAttribute('data-message-id'), ids.seeYou);
    }
    ids.onMyWay = await messageWith(bob, ON_MY_WAY).getAttribute('data-message-id');
    await screenshot(alice, '30-reply-with-quote');
  });

  step('alice edits her message: both see the new text, "edited", and the quote follows', async () => {
    const { alice, bob } = pages;
    await messageTool(messageById(alice, ids.seeYou), 'edit');
    await expectVisible(alice, '[data-testid="composer-context"]', { text: 'Editing your message' });
    assert.equal(await alice.locator('#composer-input').inputValue(), SEE_YOU);
    await typeAndSend(alice, SEE_YOU_FIXED);
    for (const page of [alice, bob]) {
      await expectVisible(page, `${sel.message()}[data-message-id="${ids.seeYou}"] .text`, { text: SEE_YOU_FIXED });
      await expectVisible(page, `${sel.message()}[data-message-id="${ids.seeYou}"] [data-testid="edited"]`);
      await expectVisible(page, `${sel.message()}[data-message-id="${ids.onMyWay}"] [data-testid="quote-text"]`, { text: SEE_YOU_FIXED });
    }
    assert.equal(await countShown(alice, SEE_YOU), 0, 'no second message: an edit changes the first');
    await screenshot(bob, '31-edited');
  });

  step('bob and alice react; each sees the counts, their own highlighted, and a click takes it back', async () => {
    const { alice, bob } = pages;
    await messageTool(messageById(bob, ids.seeYou), 'react');
    await bob.locator(`${sel.message()}[data-message-id="${ids.seeYou}"] [data-testid="pick:👍"]`).click();
    await eventually(() => reactionsOf(messageById(bob, ids.seeYou)), ['👍 1*'], 'bob\'s reaction on his page');
    await eventually(() => reactionsOf(messageById(alice, ids.seeYou)), ['👍 1'], 'bob\'s reaction on alice\'s page');
    await messageById(alice, ids.seeYou).locator('[data-testid="reaction"][data-emoji="👍"]').click();
    await eventually(() => reactionsOf(messageById(alice, ids.seeYou)), ['👍 2*'], 'alice joins');
    await eventually(() => reactionsOf(messageById(bob, ids.seeYou)), ['👍 2*'], 'bob sees two');
    await screenshot(bob, '32-reactions');
    await messageById(bob, ids.seeYou).locator('[data-testid="reaction"][data-emoji="👍"]').click();
    await eventually(() => reactionsOf(messageById(alice, ids.seeYou)), ['👍 1*'], 'bob takes his back');
    await eventually(() => reactionsOf(messageById(bob, ids.seeYou)), ['👍 1'], 'bob\'s page after taking it back');
  });

  step('alice deletes a message: a tombstone for her and for bob, and the preview falls back', async () => {
    const { alice, bob } = pages;
    await typeAndSend(alice, WRONG_CHAT);
    await expectStored(alice, WRONG_CHAT);
    await expectVisible(bob, sel.message('received'), { text: WRONG_CHAT });
    const id = await messageWith(alice, WRONG_CHAT).getAttribute('data-message-id');
    const doomed = messageById(alice, id);
    await messageTool(doomed, 'delete');
    // The first click asks; the second deletes.
    await expectVisible(alice, `${sel.message()}[data-message-id="${id}"] [data-testid="delete"]`, { text: 'Delete for everyone?' });
    await doomed.locator('[data-testid="delete"]').click();
    for (const page of [alice, bob]) {
      await expectVisible(page, `${sel.message()}[data-message-id="${id}"][data-deleted="true"] [data-testid="tombstone"]`, { text: 'Message deleted' });
      assert.equal(await countShown(page, WRONG_CHAT), 0);
    }
    await expectVisible(bob, `${sel.contact('alice')} [data-testid="preview"]`, { text: `You: ${ON_MY_WAY}` });
    await expectVisible(alice, `${sel.contact('bob')} [data-testid="preview"]`, { text: ON_MY_WAY });
    await screenshot(bob, '33-tombstone');
  });

  step('bob\'s desk, away meanwhile, sees the edit, the delete and the reaction when it is back', async () => {
    const { alice, desk } = pages;
    await expectVisible(desk, `${sel.contact('alice')} [data-testid="preview"]`, { text: `You: ${ON_MY_WAY}` });
    await unplug(deskPlug);
    await expectVisible(desk, sel.conn('reconnecting'));

    await messageTool(messageById(alice, ids.seeYou), 'edit');
    await typeAndSend(alice, SEE_YOU_LATER);
    await expectVisible(alice, `${sel.message()}[data-message-id="${ids.seeYou}"] .text`, { text: SEE_YOU_LATER });
    await messageTool(messageById(alice, ids.onMyWay), 'react');
    await alice.locator(`${sel.message()}[data-message-id="${ids.onMyWay}"] [data-testid="pick:🎉"]`).click();
    await eventually(() => reactionsOf(messageById(alice, ids.onMyWay)), ['🎉 1*'], 'alice\'s reaction');
    await typeAndSend(alice, WRONG_AGAIN);
    await expectStored(alice, WRONG_AGAIN);
    const id = await messageWith(alice, WRONG_AGAIN).getAttribute('data-message-id');
    await messageTool(messageById(alice, id), 'delete');
    await messageById(alice, id).locator('[data-testid="delete"]').click();
    await expectVisible(alice, `${sel.message()}[data-message-id="${id}"] [data-testid="tombstone"]`);

    deskPlug.in = true;
    // "Retry now" spares the wait for the next attempt, unless the page's own backoff got
    // there first: then the button is hidden, and the page must be online.
    const retryNow = desk.locator('#reconnect-now');
    await retryNow.click({ timeout: WAIT_MS }).catch(async (error) => {
      if (await retryNow.isVisible()) throw error;
    });
    await expectVisible(desk, sel.conn('online'));
    // The message sent and deleted while away counts as neither unread nor preview.
    await expectVisible(desk, `${sel.contact('alice')}[data-unread="0"] [data-testid="preview"]`, { text: `You: ${ON_MY_WAY}` });
    await openConversation(desk, 'alice');
    await expectVisible(desk, `${sel.message()}[data-message-id="${ids.seeYou}"] .text`, { text: SEE_YOU_LATER });
    await expectVisible(desk, `${sel.message()}[data-message-id="${ids.seeYou}"] [data-testid="edited"]`);
    await expectVisible(desk, `${sel.message()}[data-message-id="${ids.onMyWay}"] [data-testid="quote-text"]`, { text: SEE_YOU_LATER });
    await eventually(() => reactionsOf(messageById(desk, ids.onMyWay)), ['🎉 1'], 'alice\'s reaction on the desk');
    await eventually(() => reactionsOf(messageById(desk, ids.seeYou)), ['👍 1'], 'the reaction from before');
    await expectVisible(desk, `${sel.message()}[data-message-id="${id}"] [data-testid="tombstone"]`);
    assert.equal(await countShown(desk, WRONG_AGAIN), 0);
    await screenshot(desk, '34-desk-caught-up');
  });

  step('no page threw an uncaught error', async () => {
    assert.deepEqual(pageErrors, []);
  });
});
