import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStore } from '../../dist/index.js';
import { fakeClient, FakeServer, waitFor } from './fake-socket.mjs';

const client = fakeClient;

const msg = (seq, from = 'bob', extra = {}) => ({ message_id: String(seq), conversation_id: 'alice:bob', from, to: from === 'bob' ? 'alice' : 'bob', text: `m${seq}`, ts: seq, seq, ...extra });
const live = (seq, from) => ({ type: 'message', ...msg(seq, from) });

function seqsOf(c) {
  const seqs = [];
  c.on('entry', (e) => seqs.push(e.seq));
  return seqs;
}

test('live messages in order are applied once; repeats are ignored', async () => {
  const server = new FakeServer();
  const c = client(server);
  const seqs = seqsOf(c);
  const socket = await server.socket(1);
  socket.accept();
  for (const seq of [1, 2, 2, 3, 1]) socket.frame(live(seq));
  assert.deepEqual(seqs, [1, 2, 3]);
  assert.equal(socket.written('sync').length, 0);
  c.close();
});

test('a gap triggers a sync; the entry past the gap waits for it', async () => {
  const server = new FakeServer();
  const c = client(server);
  const seqs = seqsOf(c);
  const socket = await server.socket(1);
  socket.accept();
  socket.frame(live(1));
  socket.frame(live(4));
  assert.deepEqual(seqs, [1]);
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  assert.equal(sync.after_seq, 1);
  socket.frame({ type: 'sync', req_id: sync.req_id, messages: [msg(2), msg(3), msg(4)], events: [], last_seq: 4, has_more: false });
  await waitFor(() => seqs.length === 4, 'the filled gap');
  assert.deepEqual(seqs, [1, 2, 3, 4]);
  assert.equal(c.lastSeq, 4);
  c.close();
});

test('welcome past the position syncs, paging while has_more; messages and events merge by seq', async () => {
  const server = new FakeServer();
  const store = new MemoryStore();
  await store.setLastSeq(2);
  const c = client(server, { store });
  const seqs = seqsOf(c);
  const socket = await server.socket(1);
  socket.accept('alice', 6);
  const first = await waitFor(() => socket.written('sync')[0], 'the first page');
  assert.equal(first.after_seq, 2, 'from the stored position');
  const event = { seq: 4, event: 'group_renamed', event_id: '1', conversation_id: 'g~0123456789abcdef01234567', actor: 'bob', ts: 1, title: 'T' };
  socket.frame({ type: 'sync', req_id: first.req_id, messages: [msg(3)], events: [event], last_seq: 6, has_more: true });
  const second = await waitFor(() => socket.written('sync')[1], 'the next page');
  assert.equal(second.after_seq, 4);
  socket.frame({ type: 'sync', req_id: second.req_id, messages: [msg(5), msg(6)], events: [], last_seq: 6, has_more: false });
  await waitFor(() => seqs.length === 4, 'every entry');
  assert.deepEqual(seqs, [3, 4, 5, 6]);
  await waitFor(async () => (await store.getLastSeq()) === 6, 'the stored position');
  assert.equal(c.conversations.get('g~0123456789abcdef01234567').title, 'T');
  c.close();
});

test('sync_hint past the position syncs; one at the position does not', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  socket.frame({ type: 'sync_hint', last_seq: 0 });
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(socket.written('sync').length, 0);
  socket.frame({ type: 'sync_hint', last_seq: 2 });
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  socket.frame({ type: 'sync', req_id: sync.req_id, messages: [msg(1), msg(2)], last_seq: 2, has_more: false });
  await waitFor(() => c.lastSeq === 2, 'the position');
  c.close();
});

test('seqs a protocol-1 sync does not show are passed over', async () => {
  const server = new FakeServer();
  const c = client(server, { protocol: 1 });
  const seqs = seqsOf(c);
  const socket = await server.socket(1);
  socket.accept('alice', 5, 1);
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  socket.frame({ type: 'sync', req_id: sync.req_id, messages: [msg(2)], last_seq: 5, has_more: false });
  await waitFor(() => c.lastSeq === 5, 'the position');
  socket.frame(live(6));
  assert.deepEqual(seqs, [2, 6]);
  c.close();
});

test('seqs pruned by retention (pruned_until) are passed over, and what remains is applied', async () => {
  const server = new FakeServer();
  const c = client(server);
  const seqs = seqsOf(c);
  const warnings = [];
  c.on('warning', (w) => warnings.push(w));
  const socket = await server.socket(1);
  socket.accept('alice', 7);
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  const event = { seq: 3, event: 'group_renamed', event_id: '1', conversation_id: 'g~0123456789abcdef01234567', actor: 'bob', ts: 1, title: 'T' };
  socket.frame({ type: 'sync', req_id: sync.req_id, messages: [msg(6), msg(7)], events: [event], last_seq: 7, has_more: false, pruned_until: 5 });
  await waitFor(() => c.lastSeq === 7, 'the position');
  assert.deepEqual(seqs, [3, 6, 7]);
  assert.deepEqual(warnings, []);
  c.close();
});

test('a failed sync is retried; a sync cut by a disconnect resumes after welcome', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept('alice', 1);
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  socket.frame({ type: 'error', code: 'unavailable', message: 'storage', retryable: true, req_id: sync.req_id });
  const again = await waitFor(() => socket.written('sync')[1], 'the retry');
  socket.hangUp(1006);
  const next = await server.socket(2);
  next.accept('alice', 1);
  const resumed = await waitFor(() => next.written('sync')[0], 'the sync after welcome');
  assert.equal(resumed.after_seq, 0);
  assert.ok(again);
  next.frame({ type: 'sync', req_id: resumed.req_id, messages: [msg(1)], last_seq: 1, has_more: false });
  await waitFor(() => c.lastSeq === 1, 'the position');
  c.close();
});

test('sync() syncs now and resolves when the cycle is done', async () => {
  const server = new FakeServer();
  const c = client(server);
  const socket = await server.socket(1);
  socket.accept();
  let done = false;
  const syncing = c.sync().then(() => { done = true; });
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  assert.equal(done, false);
  socket.frame({ type: 'sync', req_id: sync.req_id, messages: [], events: [], last_seq: 0, has_more: false });
  await syncing;
  c.close();
});
