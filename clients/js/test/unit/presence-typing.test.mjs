import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeClient, FakeServer, waitFor } from './fake-socket.mjs';

const client = fakeClient;

test('watched users are subscribed again after a reconnect', async () => {
  const server = new FakeServer();
  const c = client(server);
  const seen = [];
  c.presence.subscribe((user, status) => seen.push(`${user}:${status}`));
  const first = await server.socket(1);
  first.accept();
  const watching = c.presence.watch(['bob', 'carol']);
  const sub = await waitFor(() => first.written('presence_subscribe')[0], 'the subscription');
  assert.deepEqual(sub.users, ['bob', 'carol']);
  first.frame({ type: 'presence_snapshot', req_id: sub.req_id, users: { bob: 'online', carol: 'offline' } });
  await watching;
  assert.equal(c.presence.get('bob'), 'online');
  first.frame({ type: 'presence', user: 'bob', status: 'offline', ts: 1 });
  assert.equal(c.presence.get('bob'), 'offline');
  first.hangUp(1006);
  assert.equal(c.presence.get('bob'), undefined, 'unknown while disconnected');
  const second = await server.socket(2);
  second.accept();
  const again = await waitFor(() => second.written('presence_subscribe')[0], 'the subscription again');
  assert.deepEqual(again.users, ['bob', 'carol']);
  second.frame({ type: 'presence_snapshot', req_id: again.req_id, users: { bob: 'online', carol: 'online' } });
  await waitFor(() => c.presence.get('carol') === 'online', 'the new snapshot');
  c.presence.unwatch(['carol']);
  assert.deepEqual(second.written('presence_unsubscribe')[0].users, ['carol']);
  assert.deepEqual(seen, ['bob:online', 'carol:offline', 'bob:offline', 'bob:undefined', 'carol:undefined', 'bob:online', 'carol:online', 'carol:undefined']);
  c.close();
});

test('typing is throttled per conversation and shown for a while', async () => {
  const server = new FakeServer();
  const c = client(server, { typing: { sendEveryMs: 50, showForMs: 30 } });
  const socket = await server.socket(1);
  socket.accept();
  assert.equal(c.typing('bob'), true);
  assert.equal(c.typing('bob'), false, 'throttled');
  assert.equal(c.typing('g~0123456789abcdef01234567'), true, 'another conversation');
  assert.deepEqual(socket.written('typing'), [{ type: 'typing', to: 'bob' }, { type: 'typing', conversation_id: 'g~0123456789abcdef01234567' }]);
  await waitFor(() => c.typing('bob'), 'the throttle to end');
  socket.frame({ type: 'typing', from: 'bob' });
  assert.deepEqual(c.conversations.get('alice:bob').typing, ['bob']);
  await waitFor(() => c.conversations.get('alice:bob').typing.length === 0, 'the indicator to end');
  socket.frame({ type: 'typing', from: 'bob' });
  socket.frame({ type: 'message', message_id: '1', conversation_id: 'alice:bob', from: 'bob', to: 'alice', text: 'x', ts: 1, seq: 1 });
  assert.deepEqual(c.conversations.get('alice:bob').typing, [], 'a message ends it');
  c.close();
});

test('history pages back until next_before is null', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  const pager = c.history('bob', { limit: 2 });
  const page = (before) => ({ message_id: before, conversation_id: 'alice:bob', from: 'bob', to: 'alice', text: before, ts: 1, seq: Number(before) });
  const first = pager.next();
  const q1 = await waitFor(() => socket.written('history')[0], 'the first page');
  assert.deepEqual([q1.conversation_id, q1.before, q1.limit], ['alice:bob', undefined, 2]);
  socket.frame({ type: 'history', req_id: q1.req_id, conversation_id: 'alice:bob', messages: [page('3'), page('4')], next_before: '3' });
  assert.equal((await first).length, 2);
  const second = pager.next();
  const q2 = await waitFor(() => socket.written('history')[1], 'the second page');
  assert.equal(q2.before, '3');
  socket.frame({ type: 'history', req_id: q2.req_id, conversation_id: 'alice:bob', messages: [page('1')], next_before: null });
  await second;
  assert.equal(pager.done, true);
  assert.deepEqual(c.conversations.get('alice:bob').messages.map((m) => m.text), ['1', '3', '4']);
  c.close();
});
