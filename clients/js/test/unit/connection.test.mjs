import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ServerError, ClientError } from '../../dist/index.js';
import { fakeClient, FakeServer, token, waitFor } from './fake-socket.mjs';

const client = fakeClient;

test('connects with protocol 3 and reports the states', async () => {
  const server = new FakeServer();
  const c = client(server);
  const states = [];
  c.on('state', (s) => states.push(s.status));
  const socket = await server.socket(1);
  assert.equal(socket.url.searchParams.get('protocol'), '3');
  assert.equal(socket.url.searchParams.get('user'), 'alice');
  socket.accept();
  assert.equal(c.state.status, 'connected');
  assert.equal(c.state.user, 'alice');
  socket.hangUp(1006);
  assert.equal(c.state.status, 'reconnecting');
  assert.ok(c.state.nextAttemptAt >= Date.now() - 1);
  assert.equal(c.state.lastCloseCode, 1006);
  (await server.socket(2)).accept();
  assert.deepEqual(states, ['connecting', 'connected', 'reconnecting', 'connected']);
  c.close();
  assert.equal(c.state.status, 'closed');
  assert.equal(c.state.reason, 'client');
});

test('reconnects after 1001, 1011 and 1013', async () => {
  const server = new FakeServer();
  const c = client(server);
  let n = 1;
  for (const code of [1001, 1011, 1013, 1009]) {
    const socket = await server.socket(n++);
    socket.accept();
    socket.hangUp(code);
    assert.equal(c.state.status, 'reconnecting', String(code));
  }
  await server.socket(n);
  c.close();
});

test('does not reconnect after 1008', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  socket.hangUp(1008, 'command rate exceeded persistently');
  assert.equal(c.state.status, 'closed');
  assert.equal(c.state.reason, 'rate_abuse');
  assert.equal(c.state.code, 1008);
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(server.sockets.length, 1);
});

test('after 4001 it reconnects only with a fresh token', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  let issued = 0;
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken: () => token(exp, ++issued) });
  const first = await server.socket(1);
  assert.equal(first.url.searchParams.get('token'), token(exp, 1));
  first.accept();
  first.hangUp(4001, 'token expired');
  const second = await server.socket(2);
  assert.equal(second.url.searchParams.get('token'), token(exp, 2));
  second.accept();
  assert.equal(c.state.status, 'connected');
  c.close();
});

test('after 4001 without a fresh token it stops', async () => {
  const server = new FakeServer();
  const same = token(Math.floor(Date.now() / 1000) + 3600);
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken: () => same });
  const socket = await server.socket(1);
  socket.accept();
  socket.hangUp(4001, 'token expired');
  await waitFor(() => c.state.status === 'closed', 'closed');
  assert.equal(c.state.reason, 'token_expired');
  assert.equal(server.sockets.length, 1);
});

test('a dev client (no getToken) stops on 4001', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  socket.hangUp(4001);
  assert.equal(c.state.status, 'closed');
  assert.equal(c.state.reason, 'token_expired');
});

test('a refused upgrade: 401 asks for a fresh token, 403 stops, 503 retries', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  let issued = 0;
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken: () => token(exp, ++issued) });
  (await server.socket(1)).refuse(401);
  const second = await server.socket(2);
  assert.equal(second.url.searchParams.get('token'), token(exp, 2));
  second.refuse(503);
  const third = await server.socket(3);
  assert.equal(third.url.searchParams.get('token'), token(exp, 2), 'a 503 keeps the token');
  third.refuse(403);
  assert.equal(c.state.status, 'closed');
  assert.equal(c.state.reason, 'refused');
  assert.equal(c.state.code, 403);
});

test('an expired token is not used: getToken is asked, and an expired answer stops', async () => {
  const server = new FakeServer();
  const past = token(Math.floor(Date.now() / 1000) - 10);
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken: () => past });
  await waitFor(() => c.state.status === 'closed', 'closed');
  assert.equal(c.state.reason, 'token_expired');
  assert.equal(server.sockets.length, 0);
});

test('refreshes the token before its exp, from getToken', async () => {
  const server = new FakeServer();
  let issued = 0;
  const getToken = () => token(Math.floor(Date.now() / 1000) + 2, ++issued);
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken, refreshMarginMs: 60_000 });
  const socket = await server.socket(1);
  socket.accept();
  const refresh = await waitFor(() => socket.written('refresh')[0], 'refresh', 3000);
  assert.equal(refresh.token, token(JSON.parse(Buffer.from(refresh.token.split('.')[1], 'base64url')).exp, 2));
  socket.frame({ type: 'refreshed', req_id: refresh.req_id, exp: Math.floor(Date.now() / 1000) + 2 });
  await waitFor(() => socket.written('refresh').length >= 2, 'a second refresh', 3000);
  assert.equal(c.state.status, 'connected');
  c.close();
});

test('a request is rejected with the server error code', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  const reply = c.request({ type: 'members', conversation_id: 'g~0123456789abcdef01234567' });
  const sent = socket.written('members')[0];
  socket.frame({ type: 'error', code: 'not_a_member', message: 'not a member', retryable: false, req_id: sent.req_id });
  await assert.rejects(reply, (e) => e instanceof ServerError && e.code === 'not_a_member' && e.retryable === false);
  const lost = c.request({ type: 'ping' });
  socket.hangUp(1006);
  await assert.rejects(lost, (e) => e instanceof ClientError && e.code === 'disconnected');
  c.close();
});

test('drops a socket that stays silent and reconnects', async () => {
  const server = new FakeServer();
  const c = client(server, { pingAfterMs: 20, deadAfterMs: 60 });
  const socket = await server.socket(1);
  socket.accept();
  await waitFor(() => socket.written('ping').length > 0, 'a ping');
  await server.socket(2);
  assert.equal(socket.closedByClient.code, 4000);
  c.close();
});

test('writes are paced under the command rate', async () => {
  const server = new FakeServer();
  const c = client(server, { rate: { perSecond: 20, burst: 5 } });
  const socket = await server.socket(1);
  socket.accept();
  for (let i = 0; i < 10; i++) c.typing(`user${i}`);
  assert.equal(socket.sent.length, 5);
  await waitFor(() => socket.sent.length === 10, 'the rest, paced', 3000);
  c.close();
});

test('offline while the browser says so; connects when it comes back online', async (t) => {
  const listeners = {};
  const nav = { onLine: false };
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  Object.defineProperty(globalThis, 'navigator', { value: nav, configurable: true, writable: true });
  globalThis.addEventListener = (name, fn) => { listeners[name] = fn; };
  globalThis.removeEventListener = (name) => { delete listeners[name]; };
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    if (saved) Object.defineProperty(globalThis, 'navigator', saved);
    else delete globalThis.navigator;
  });
  const server = new FakeServer();
  const c = client(server);
  await waitFor(() => c.state.status === 'offline', 'offline');
  assert.equal(server.sockets.length, 0);
  nav.onLine = true;
  listeners.online();
  (await server.socket(1)).accept();
  assert.equal(c.state.status, 'connected');
  c.close();
  assert.equal(listeners.online, undefined, 'listeners removed on close');
});

test('the connection URL keeps its own parameters and sets protocol and token', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const c = client(server, { url: 'ws://peroxo.test/ws?tenant=acme&protocol=1&token=old', getToken: () => token(exp, 1) });
  const socket = await server.socket(1);
  assert.equal(socket.url.searchParams.get('tenant'), 'acme');
  assert.equal(socket.url.searchParams.get('protocol'), '3');
  assert.deepEqual(socket.url.searchParams.getAll('token'), [token(exp, 1)]);
  c.close();
});

test('reconnectNow while an attempt waits for getToken opens one socket, not two', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  let calls = 0;
  let release;
  const getToken = () => {
    calls += 1;
    if (calls === 1) return token(exp, 1);
    return new Promise((resolve) => { release = () => resolve(token(exp, calls)); });
  };
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken });
  (await server.socket(1)).hangUp(1006); // before welcome: the token is suspect, ask again
  c.reconnectNow();
  await waitFor(() => release, 'the slow getToken');
  c.reconnectNow();
  c.reconnectNow();
  release();
  (await server.socket(2)).accept();
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(server.sockets.length, 2);
  assert.equal(calls, 2);
  c.close();
});

test('close() rejects pending requests with closed', async () => {
  const server = new FakeServer();
  const c = client(server);
  (await server.socket(1)).accept();
  const pending = c.request({ type: 'ping' });
  c.close();
  await assert.rejects(pending, (e) => e instanceof ClientError && e.code === 'closed');
});

/** A `fetch` for `/ws/check` that answers `status` and records the URLs it was asked. */
function checkAnswering(status) {
  const asked = [];
  const fetch = async (url) => { asked.push(url); if (status === 'down') throw new TypeError('fetch failed'); return { status }; };
  return { fetch, asked };
}

test('a socket closed before welcome asks /ws/check why: 401 wants a fresh token', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  let calls = 0;
  const check = checkAnswering(401);
  const c = client(server, { url: 'wss://peroxo.test/ws', getToken: () => token(exp, ++calls), fetch: check.fetch });
  (await server.socket(1)).hangUp(1006);
  const second = await server.socket(2);
  assert.deepEqual(check.asked, [`https://peroxo.test/ws/check?protocol=3&token=${token(exp, 1)}`]);
  assert.deepEqual(second.url.searchParams.getAll('token'), [token(exp, 2)]);
  c.close();
});

test('a 401 from /ws/check with no fresh token stops the client', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const c = client(server, { url: 'ws://peroxo.test/ws', getToken: () => token(exp, 1), fetch: checkAnswering(401).fetch });
  (await server.socket(1)).hangUp(1006);
  await waitFor(() => c.state.status === 'closed', 'closed');
  assert.equal(c.state.reason, 'token_expired');
  assert.equal(server.sockets.length, 1);
});

test('a 403 from /ws/check stops the client; a node it cannot reach keeps the token', async () => {
  const server = new FakeServer();
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const refused = client(server, { url: 'ws://peroxo.test/ws', getToken: () => token(exp, 1), fetch: checkAnswering(403).fetch });
  (await server.socket(1)).hangUp(1006);
  await waitFor(() => refused.state.status === 'closed', 'closed');
  assert.equal(refused.state.reason, 'refused');
  assert.equal(refused.state.code, 403);

  for (const answer of ['down', 200, 503]) {
    const again = new FakeServer();
    let calls = 0;
    const c = client(again, { url: 'ws://peroxo.test/ws', getToken: () => token(exp, ++calls), fetch: checkAnswering(answer).fetch });
    (await again.socket(1)).hangUp(1006);
    const second = await again.socket(2);
    assert.deepEqual(second.url.searchParams.getAll('token'), [token(exp, 1)], `after ${answer}`);
    assert.equal(calls, 1, `after ${answer}`);
    c.close();
  }
});
