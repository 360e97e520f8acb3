// The SDK against a real `peroxo serve` in jwt mode (leeway 0): a token refreshed before it
// expires keeps the session; a token that could not be refreshed ends in 4001 and a reconnect
// with a fresh one.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '../../dist/index.js';
import { mintToken, Server, waitFor } from './server.mjs';

const clients = [];

describe('tokens against a real server', () => {
  let server;
  before(async () => { server = await Server.create({ jwt: true }); });
  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
  });

  test('refresh before exp keeps the session open past the first token\'s expiry', async () => {
    let issued = 0;
    const c = connect({ url: server.url, WebSocket: globalThis.WebSocket, getToken: () => { issued++; return mintToken('carol', 3); } });
    clients.push(c);
    const states = [];
    c.on('state', (s) => states.push(s.status));
    await c.whenConnected();
    const firstExpiry = Date.now() + 3000;
    await waitFor(() => Date.now() > firstExpiry + 1500, 'the first token to expire', 10_000);
    assert.deepEqual(states, ['connecting', 'connected'], 'never disconnected');
    assert.ok(issued >= 3, `getToken was asked for refreshes (${issued})`);
    const ack = await c.send('dave', 'still here');
    assert.equal(ack.duplicate, false);
  });

  test('a token that could not be refreshed: 4001, then a reconnect with a fresh token', async () => {
    let failing = false;
    const c = connect({
      url: server.url, WebSocket: globalThis.WebSocket, backoff: { initialMs: 50, maxMs: 200 },
      getToken: () => {
        if (failing) throw new Error('the token service is down');
        return mintToken('erin', 2);
      },
    });
    clients.push(c);
    const closes = [];
    c.on('state', (s) => { if (s.status === 'reconnecting') closes.push(s.lastCloseCode); });
    await c.whenConnected();
    failing = true;
    await waitFor(() => closes.includes(4001), 'the server closes with 4001', 10_000);
    failing = false;
    await c.whenConnected();
    assert.equal(c.user, 'erin');
    await c.send('frank', 'back with a fresh token');
  });
});
