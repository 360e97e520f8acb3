import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClientError, MemoryStore, ServerError } from '../../dist/index.js';
import { fakeClient, FakeServer, waitFor } from './fake-socket.mjs';

const client = fakeClient;

function ackFor(send, seq, duplicate = false) {
  return { type: 'ack', client_msg_id: send.client_msg_id, message_id: String(100 + seq), conversation_id: 'alice:bob', seq, ts: 1, duplicate };
}

test('send resolves with its ack and the message enters the stream', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  const sent = c.send('bob', 'hi');
  const frame = await waitFor(() => socket.written('send')[0], 'the send');
  assert.equal(frame.to, 'bob');
  assert.equal(frame.text, 'hi');
  socket.frame(ackFor(frame, 1));
  const ack = await sent;
  assert.equal(ack.seq, 1);
  assert.equal(ack.duplicate, false);
  assert.equal(c.lastSeq, 1);
  assert.equal(c.conversations.get('alice:bob').messages[0].text, 'hi');
  assert.deepEqual(c.pendingSends(), []);
  c.close();
});

test('a conversation id is sent as conversation_id', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  void c.send('g~0123456789abcdef01234567', 'hi all');
  const frame = await waitFor(() => socket.written('send')[0], 'the send');
  assert.equal(frame.conversation_id, 'g~0123456789abcdef01234567');
  assert.equal(frame.to, undefined);
  c.close();
});

test('unacked sends are resent with the same client_msg_id after a reconnect; a duplicate ack resolves', async () => {
  const server = new FakeServer();
  const c = client(server);
  const first = await server.socket(1);
  first.accept();
  const sent = [c.send('bob', 'one'), c.send('bob', 'two')];
  await waitFor(() => first.written('send').length === 2, 'both sends');
  const ids = first.written('send').map((f) => f.client_msg_id);
  first.hangUp(1001, 'server shutting down');
  const second = await server.socket(2);
  second.accept();
  const again = await waitFor(() => second.written('send').length === 2 && second.written('send'), 'the resends');
  assert.deepEqual(again.map((f) => f.client_msg_id), ids, 'same ids, same order');
  second.frame(ackFor(again[0], 1, true));
  second.frame(ackFor(again[1], 2));
  const [one, two] = await Promise.all(sent);
  assert.equal(one.duplicate, true);
  assert.equal(two.duplicate, false);
  c.close();
});

test('retryable errors resend with the same client_msg_id; others reject with the exact code', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  const retried = c.send('bob', 'retry me');
  const refused = c.send('bob', 'x'.repeat(5000));
  await waitFor(() => socket.written('send').length === 2, 'both sends');
  const [a, b] = socket.written('send');
  socket.frame({ type: 'error', code: 'unavailable', message: 'later', retryable: true, client_msg_id: a.client_msg_id });
  socket.frame({ type: 'error', code: 'too_large', message: 'too long', retryable: false, client_msg_id: b.client_msg_id });
  await assert.rejects(refused, (e) => e instanceof ServerError && e.code === 'too_large' && e.clientMsgId === b.client_msg_id);
  const resent = await waitFor(() => socket.written('send')[2], 'the resend');
  assert.equal(resent.client_msg_id, a.client_msg_id);
  socket.frame({ type: 'error', code: 'rate_limited', message: 'slow down', retryable: true, client_msg_id: a.client_msg_id });
  const resentAgain = await waitFor(() => socket.written('send')[3], 'the second resend');
  assert.equal(resentAgain.client_msg_id, a.client_msg_id);
  socket.frame(ackFor(resentAgain, 1));
  assert.equal((await retried).seq, 1);
  c.close();
});

test('an internal error without ids (a session restart) resends what was on the wire', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  void c.send('bob', 'maybe lost');
  const first = await waitFor(() => socket.written('send')[0], 'the send');
  socket.frame({ type: 'error', code: 'internal', message: 'session restarted', retryable: true });
  const again = await waitFor(() => socket.written('send')[1], 'the resend');
  assert.equal(again.client_msg_id, first.client_msg_id);
  c.close();
});

test('sends kept in the store by an earlier client go out after welcome and report their ack', async () => {
  const store = new MemoryStore();
  await store.putSend({ clientMsgId: 'kept-1', to: 'bob', text: 'from before', createdAt: 1 });
  const server = new FakeServer();
  const c = client(server, { store });
  const acks = [];
  c.on('ack', (ack, send) => acks.push([ack.clientMsgId, send.text]));
  const socket = await server.socket(1);
  socket.accept();
  const frame = await waitFor(() => socket.written('send')[0], 'the kept send');
  assert.equal(frame.client_msg_id, 'kept-1');
  socket.frame(ackFor(frame, 1, true));
  await waitFor(() => acks.length === 1, 'the ack event');
  assert.deepEqual(acks, [['kept-1', 'from before']]);
  assert.deepEqual(await store.pendingSends(), []);
  c.close();
});

test('a send made while disconnected waits for the connection', async () => {
  const server = new FakeServer();
  const c = client(server);
  const sent = c.send('bob', 'offline first');
  const socket = await server.socket(1);
  assert.equal(socket.written('send').length, 0);
  socket.accept();
  const frame = await waitFor(() => socket.written('send')[0], 'the send');
  socket.frame(ackFor(frame, 1));
  assert.equal((await sent).seq, 1);
  c.close();
});

test('the own message seen in a sync settles its send as a duplicate', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  const sent = c.send('bob', 'committed, ack lost');
  const frame = await waitFor(() => socket.written('send')[0], 'the send');
  socket.frame({ type: 'message', message_id: '7', conversation_id: 'alice:bob', from: 'alice', to: 'bob', text: 'committed, ack lost', ts: 1, seq: 1, client_msg_id: frame.client_msg_id });
  const ack = await sent;
  assert.equal(ack.duplicate, true);
  assert.equal(ack.messageId, '7');
  c.close();
});

test('a send over the protocol\'s frame limit is refused before it is written', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  await assert.rejects(c.send('bob', 'é'.repeat(40_000)), (e) => e instanceof ClientError && e.code === 'frame_too_large');
  assert.equal(socket.written('send').length, 0);
  assert.deepEqual(c.pendingSends(), []);
  c.close();
});
