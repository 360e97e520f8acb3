// Protocol 3 against a real `peroxo serve --dev`: replies, edits (idempotent by
// client_msg_id), deletes and reactions reach the other user live, a second device of the same
// user that was away converges by sync, and both agree with what the server says afterwards;
// pages read before the sync catches up are as of their last_seq, so nothing counts twice.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, MemoryStore, ServerError } from '../../dist/index.js';
import { Server, waitFor } from './server.mjs';

const FAST = { backoff: { initialMs: 50, maxMs: 500 } };
const clients = [];

/** A WebSocket class whose connections the test can cut and refuse, as if the device went away. */
function unpluggable() {
  const sockets = new Set();
  const Unpluggable = class extends WebSocket {
    static away = false;
    constructor(url) {
      // Nothing listens on port 9: while away, every attempt fails.
      super(Unpluggable.away ? 'ws://127.0.0.1:9/ws' : url);
      sockets.add(this);
    }
    static unplug() {
      Unpluggable.away = true;
      for (const socket of sockets) socket.close();
      sockets.clear();
    }
    static plugIn() {
      Unpluggable.away = false;
    }
  };
  return Unpluggable;
}

/** A WebSocket class that holds back `sync` answers until `release()`, so that pages come first. */
function holdingSyncs() {
  const held = [];
  let holding = true;
  return class Holding extends WebSocket {
    set onmessage(handler) {
      super.onmessage = handler && ((event) => {
        if (holding && JSON.parse(event.data).type === 'sync') held.push(() => handler(event));
        else handler(event);
      });
    }
    get onmessage() {
      return super.onmessage;
    }
    static release() {
      holding = false;
      for (const deliver of held.splice(0)) deliver();
    }
  };
}

function client(server, user, options = {}) {
  const c = connect({ url: `${server.url}?user=${user}`, WebSocket: globalThis.WebSocket, fetch: null, ...FAST, ...options });
  clients.push(c);
  return c;
}

/** What protocol 3 says of a message, to compare devices. */
function lifecycleOf(m) {
  return { id: m.message_id, from: m.from, text: m.text, edited: m.edited_ts !== undefined && m.edited_ts !== null, deleted: m.deleted ?? null, reactions: m.reactions ?? [], reply_to: m.reply_to ?? null };
}

const messageOf = (c, id, messageId) => c.conversations.get(id)?.messages.find((m) => m.message_id === messageId);

describe('protocol 3 against a real server', () => {
  let server;
  before(async () => { server = await Server.create(); });
  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
  });

  test('edits, deletes, reactions and replies reach the other user and a device that was away', async () => {
    const DM = 'alice6:bob6';
    const Desk = unpluggable();
    const alice = client(server, 'alice6');
    const bob = client(server, 'bob6');
    const desk = client(server, 'bob6', { WebSocket: Desk });
    await Promise.all([alice.whenConnected(), bob.whenConnected(), desk.whenConnected()]);
    assert.equal(alice.protocol, 3);

    const first = await alice.send('bob6', 'helo wrold');
    await waitFor(() => messageOf(bob, DM, first.messageId), 'bob gets the first message');
    const reply = await bob.send('alice6', 'what?', { replyTo: first.messageId });
    assert.deepEqual(messageOf(bob, DM, reply.messageId).reply_to, { message_id: first.messageId, from: 'alice6', excerpt: 'helo wrold' });
    await waitFor(() => messageOf(alice, DM, reply.messageId), 'alice gets the reply');
    assert.deepEqual(messageOf(alice, DM, reply.messageId).reply_to, { message_id: first.messageId, from: 'alice6', excerpt: 'helo wrold' });
    await bob.react(DM, first.messageId, '👍');
    const doomed = await alice.send('bob6', 'oops, wrong chat');
    await waitFor(() => messageOf(desk, DM, doomed.messageId) && messageOf(desk, DM, first.messageId)?.reactions, 'the desk has it all');
    assert.equal(desk.conversations.get(DM).unreadCount, 1);

    Desk.unplug();
    await waitFor(() => desk.state.status === 'reconnecting', 'the desk is away');

    const edit = await alice.edit(DM, first.messageId, 'hello world', { clientMsgId: 'edit-1' });
    assert.equal(edit.duplicate, false);
    assert.equal(edit.message.text, 'hello world');
    assert.ok(edit.message.edited_ts > 0);
    const again = await alice.edit(DM, first.messageId, 'hello world', { clientMsgId: 'edit-1' });
    assert.equal(again.duplicate, true);
    const deleted = await alice.delete(DM, doomed.messageId);
    assert.equal(deleted.message.text, '');
    assert.equal(deleted.message.deleted.by, 'alice6');
    await alice.react(DM, first.messageId, '👍');
    await alice.react(DM, first.messageId, '🎉');
    await alice.unreact(DM, first.messageId, '🎉');
    assert.deepEqual(messageOf(alice, DM, first.messageId).reactions, [{ emoji: '👍', count: 2, mine: true }]);

    // Bob's phone, online all along, sees each change live.
    await waitFor(() => messageOf(bob, DM, first.messageId).text === 'hello world', 'bob sees the edit');
    await waitFor(() => messageOf(bob, DM, doomed.messageId).deleted, 'bob sees the delete');
    const reactions = JSON.stringify([{ emoji: '👍', count: 2, mine: true }]);
    await waitFor(() => JSON.stringify(messageOf(bob, DM, first.messageId).reactions) === reactions, 'bob sees alice\'s reactions come and go');
    assert.equal(messageOf(bob, DM, reply.messageId).reply_to.excerpt, 'hello world');
    assert.equal(bob.conversations.get(DM).unreadCount, 0, 'the deleted message was the unread one');
    assert.equal(bob.conversations.get(DM).lastMessage.message_id, reply.messageId, 'the preview falls back');

    // The desk comes back and converges by sync.
    Desk.plugIn();
    desk.reconnectNow();
    await desk.whenConnected();
    await desk.sync();
    const ids = [first.messageId, reply.messageId, doomed.messageId];
    for (const id of ids) assert.deepEqual(lifecycleOf(messageOf(desk, DM, id)), lifecycleOf(messageOf(bob, DM, id)), `message ${id}`);
    assert.equal(desk.conversations.get(DM).unreadCount, 0);
    assert.equal(desk.conversations.get(DM).lastMessage.message_id, reply.messageId);

    // What the server says now is what both devices made of the stream.
    const fresh = client(server, 'bob6');
    await fresh.whenConnected();
    const page = await fresh.history(DM).next();
    for (const m of page) assert.deepEqual(lifecycleOf(m), lifecycleOf(messageOf(bob, DM, m.message_id)), `message ${m.message_id} from history`);
    const list = await fresh.loadConversations();
    const summary = list.conversations.find((c) => c.conversation_id === DM);
    assert.equal(summary.unread_count, 0);
    assert.equal(summary.last_message.message_id, reply.messageId);
  });

  test('history and list pages read before the sync catches up count each change once', async () => {
    const DM = 'alice8:bob8';
    const store = new MemoryStore();
    const alice = client(server, 'alice8');
    const desk = client(server, 'bob8', { store });
    await Promise.all([alice.whenConnected(), desk.whenConnected()]);
    const kept = await alice.send('bob8', 'keep me');
    const doomed = await alice.send('bob8', 'delete me');
    await waitFor(() => messageOf(desk, DM, doomed.messageId), 'the desk has both');
    desk.close();

    await alice.react(DM, kept.messageId, '👍');
    await alice.edit(DM, kept.messageId, 'kept');
    await alice.delete(DM, doomed.messageId);
    const phone = client(server, 'bob8');
    await phone.whenConnected();
    const reacted = await phone.react(DM, kept.messageId, '🎉');
    assert.ok(reacted.seq > 0, 'a change answers with its event\'s seq');
    const again = await phone.react(DM, kept.messageId, '🎉');
    assert.equal(again.seq ?? undefined, undefined, 'a change that changes nothing has none');

    // The desk comes back from where it was: its pages come before the entries they show.
    const Holding = holdingSyncs();
    const back = client(server, 'bob8', { store, WebSocket: Holding });
    await back.whenConnected();
    assert.ok(back.lastSeq < reacted.seq, 'the desk is behind');
    const page = await back.history(DM).next();
    assert.equal(page.length, 2);
    const list = await back.loadConversations();
    assert.ok(list.last_seq >= reacted.seq, `the list is as of ${list.last_seq}`);
    Holding.release();
    await back.sync();
    assert.ok(back.lastSeq >= reacted.seq);
    for (const id of [kept.messageId, doomed.messageId]) {
      assert.deepEqual(lifecycleOf(messageOf(back, DM, id)), lifecycleOf(messageOf(phone, DM, id)), `message ${id}`);
    }
    assert.deepEqual(messageOf(back, DM, kept.messageId).reactions, [{ emoji: '👍', count: 1, mine: false }, { emoji: '🎉', count: 1, mine: true }]);
    assert.equal(back.conversations.get(DM).unreadCount, 1, 'the delete the list showed is not taken off again');

    // A change after the pages applies as usual.
    await alice.react(DM, kept.messageId, '🎉');
    await waitFor(() => messageOf(back, DM, kept.messageId).reactions?.[1]?.count === 2, 'the desk sees alice\'s 🎉');
  });

  test('refusals carry the server\'s codes; protocol 2 is told to ask for 3', async () => {
    const DM = 'alice7:bob7';
    const alice = client(server, 'alice7');
    const bob = client(server, 'bob7');
    const old = client(server, 'carol7', { protocol: 2 });
    await Promise.all([alice.whenConnected(), bob.whenConnected(), old.whenConnected()]);
    assert.equal(old.protocol, 2);
    const sent = await alice.send('bob7', 'mine');
    const refused = (code) => (e) => e instanceof ServerError && e.code === code;
    await assert.rejects(bob.edit(DM, sent.messageId, 'yours'), refused('not_author'));
    await assert.rejects(bob.delete(DM, sent.messageId), refused('not_author'));
    await assert.rejects(alice.react(DM, '999999', '👍'), refused('unknown_message'));
    await assert.rejects(alice.react(DM, sent.messageId, 'two words'), refused('bad_request'));
    await alice.delete(DM, sent.messageId);
    const twice = await alice.delete(DM, sent.messageId);
    assert.ok(twice.message.deleted, 'deleting twice changes nothing');
    await assert.rejects(alice.edit(DM, sent.messageId, 'back'), refused('message_deleted'));
    await assert.rejects(bob.react(DM, sent.messageId, '👍'), refused('message_deleted'));
    await assert.rejects(bob.send('alice7', 'quoting', { replyTo: sent.messageId }), refused('message_deleted'));
    await assert.rejects(old.react('alice7:carol7', sent.messageId, '👍'), (e) => e instanceof ServerError && e.code === 'bad_request' && /protocol 3/.test(e.message));
  });
});
