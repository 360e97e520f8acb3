// The SDK against a real `peroxo serve --dev`: delivery, idempotent resends, the server killed
// and restarted in the middle of a burst of sends, groups and the conversation list.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, ServerError } from '../../dist/index.js';
import { Server, waitFor } from './server.mjs';

const FAST = { backoff: { initialMs: 50, maxMs: 500 } };
const clients = [];

function client(server, user, options = {}) {
  const c = connect({ url: `${server.url}?user=${user}`, WebSocket: globalThis.WebSocket, ...FAST, ...options });
  clients.push(c);
  return c;
}

/** Every message text a client applies from its stream, in order. */
function received(c) {
  const texts = [];
  c.on('entry', (e) => { if (e.kind === 'message') texts.push(e.message.text); });
  return texts;
}

describe('against a real server', () => {
  let server;
  before(async () => { server = await Server.create(); });
  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
  });

  test('a send is acked and delivered once; a resend of its client_msg_id is a duplicate', async () => {
    const alice = client(server, 'alice1');
    const bob = client(server, 'bob1');
    const bobGot = received(bob);
    await Promise.all([alice.whenConnected(), bob.whenConnected()]);
    const ack = await alice.send('bob1', 'hello', { clientMsgId: 'fixed-1' });
    assert.equal(ack.duplicate, false);
    assert.equal(ack.conversationId, 'alice1:bob1');
    const again = await alice.send('bob1', 'hello', { clientMsgId: 'fixed-1' });
    assert.equal(again.duplicate, true);
    assert.equal(again.messageId, ack.messageId);
    await waitFor(() => bobGot.length === 1, 'bob gets the message');
    await bob.sync();
    assert.deepEqual(bobGot, ['hello']);
    assert.equal(bob.conversations.get('alice1:bob1').unreadCount, 1);
  });

  test('bad input is refused with the server\'s exact code', async () => {
    const alice = client(server, 'alice2');
    await alice.whenConnected();
    await assert.rejects(alice.send('bob2', ''), (e) => e instanceof ServerError && e.code === 'bad_request');
    await assert.rejects(alice.send('bob2', 'x'.repeat(5000)), (e) => e instanceof ServerError && e.code === 'too_large');
    await assert.rejects(alice.request({ type: 'members', conversation_id: 'g~0123456789abcdef01234567' }),
      (e) => e instanceof ServerError && ['unknown_conversation', 'not_a_member'].includes(e.code));
    assert.deepEqual(alice.pendingSends(), []);
  });

  test('the server killed and restarted mid-send: nothing lost, nothing duplicated', async () => {
    const alice = client(server, 'alice3');
    const bob = client(server, 'bob3');
    const bobGot = received(bob);
    await Promise.all([alice.whenConnected(), bob.whenConnected()]);
    const texts = Array.from({ length: 60 }, (_, i) => `burst ${i}`);
    let acked = 0;
    const sends = texts.map((t) => alice.send('bob3', t).then((ack) => { acked++; return ack; }));
    await waitFor(() => acked >= 5, 'a few acks before the kill');
    await server.kill();
    assert.ok(acked < texts.length, `the kill came mid-send (${acked} acked)`);
    await waitFor(() => alice.state.status === 'reconnecting', 'alice notices');
    await server.start();
    const acks = await Promise.all(sends);
    assert.equal(new Set(acks.map((a) => a.messageId)).size, texts.length, 'one message per send');
    await waitFor(() => bobGot.length >= texts.length, 'bob has every message');
    await bob.sync();
    assert.deepEqual([...bobGot].sort(), [...texts].sort());
    assert.equal(bobGot.length, texts.length, 'no duplicate');
    // A new device reads the stream from the start: the same messages, once each.
    const fresh = client(server, 'bob3');
    const freshGot = received(fresh);
    await fresh.whenConnected();
    await fresh.sync();
    assert.deepEqual(freshGot, bobGot);
    // History pages back through the same messages, newest page first.
    const pager = fresh.history('alice3', { limit: 25 });
    const pages = [];
    while (!pager.done) pages.push((await pager.next()).map((m) => m.text));
    assert.deepEqual(pages.map((p) => p.length), [25, 25, 10]);
    assert.deepEqual(pages.reverse().flat(), bobGot);
  });

  test('groups: creation, messages and events reach every member and the list', async () => {
    const alice = client(server, 'alice4');
    const bob = client(server, 'bob4');
    await Promise.all([alice.whenConnected(), bob.whenConnected()]);
    const created = await alice.createGroup('Team', ['bob4']);
    const id = created.conversation_id;
    await waitFor(() => bob.conversations.get(id)?.title === 'Team', 'bob sees the group');
    await alice.send(id, 'hi team');
    await waitFor(() => bob.conversations.get(id)?.lastMessage?.text === 'hi team', 'bob gets the group message');
    assert.equal(bob.conversations.get(id).unreadCount, 1);
    const groupMessage = bob.conversations.get(id).lastMessage.message_id;
    await bob.markRead(id, groupMessage);
    assert.equal(bob.conversations.get(id).unreadCount, 0);
    const receipts = await alice.request({ type: 'read_receipts', conversation_id: id, message_id: groupMessage });
    assert.deepEqual(receipts.readers.map((r) => r.user), ['bob4']);
    await bob.markUnread(id);
    assert.equal(bob.conversations.get(id).unreadCount, 1);
    await bob.markRead(id, groupMessage);
    await alice.request({ type: 'rename_group', conversation_id: id, title: 'Team B' });
    await waitFor(() => bob.conversations.get(id)?.title === 'Team B', 'bob sees the rename');
    const reply = await bob.loadMembers(id);
    assert.deepEqual(reply.members.map((m) => m.user), ['alice4', 'bob4']);
    const list = await bob.loadConversations();
    assert.equal(list.conversations[0].conversation_id, id);
    assert.equal(list.total_unread, 0);
  });

  test('presence is watched again after the server restarts', async () => {
    const alice = client(server, 'alice5');
    const bob = client(server, 'bob5');
    await Promise.all([alice.whenConnected(), bob.whenConnected()]);
    await alice.presence.watch(['bob5']);
    assert.equal(alice.presence.get('bob5'), 'online');
    await server.kill();
    await waitFor(() => alice.presence.get('bob5') === undefined, 'unknown while down');
    await server.start();
    await waitFor(() => alice.presence.get('bob5') === 'online', 'watched again after the restart', 30_000);
    bob.close();
    await waitFor(() => alice.presence.get('bob5') === 'offline', 'bob goes offline');
  });
});
