// Protocol 3 in the conversation store and the client: edits, deletes (tombstones, unread
// counts, previews), reactions, and the quotes of replies following what they quote.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConversationStore, quoteExcerpt } from '../../dist/index.js';
import { fakeClient, FakeServer, waitFor } from './fake-socket.mjs';

const DM = 'alice:bob';
const G = 'g~0123456789abcdef01234567';
const view = (seq, id, from, extra = {}) => ({ message_id: String(id), conversation_id: DM, from, to: from === 'alice' ? 'bob' : 'alice', text: `t${id}`, ts: seq, seq, ...extra });
const m = (seq, id, from, extra) => ({ kind: 'message', seq, message: view(seq, id, from, extra) });
const e = (seq, event, messageId, fields = {}) => ({ kind: 'event', seq, event: { seq, event, event_id: `e${seq}`, conversation_id: DM, actor: 'bob', ts: 100 + seq, message_id: String(messageId), ...fields } });

function store() {
  const s = new ConversationStore();
  s.me = 'alice';
  return s;
}

const byId = (s, id, conversation = DM) => s.get(conversation).messages.find((x) => x.message_id === String(id));

test('an edit replaces the text and sets edited_ts; the quotes of replies follow it', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), m(2, 11, 'alice', { reply_to: { message_id: '10', from: 'bob', excerpt: 't10' } })]);
  const reply = byId(s, 11);
  const changes = [];
  s.subscribe((ids) => changes.push(ids));
  s.apply([e(3, 'message_edited', 10, { text: 'fixed' })]);
  assert.equal(byId(s, 10).text, 'fixed');
  assert.equal(byId(s, 10).edited_ts, 103);
  assert.deepEqual(byId(s, 11).reply_to, { message_id: '10', from: 'bob', excerpt: 'fixed' });
  assert.notEqual(byId(s, 11), reply, 'a changed reply is a new object');
  assert.deepEqual(changes, [[DM]]);
  // An excerpt is the first 100 characters, counted as code points.
  const long = '😀'.repeat(150);
  s.apply([e(4, 'message_edited', 10, { text: long })]);
  assert.equal(byId(s, 11).reply_to.excerpt, '😀'.repeat(100));
  assert.equal(quoteExcerpt('short'), 'short');
});

test('a delete leaves a tombstone, takes an unread message out of the count and moves the preview back', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), m(2, 11, 'bob'), m(3, 12, 'bob', { reply_to: { message_id: '11', from: 'bob', excerpt: 't11' } })]);
  s.apply([e(4, 'reaction_added', 12, { emoji: '👍', actor: 'alice' })]);
  assert.equal(s.get(DM).unreadCount, 3);
  s.apply([e(5, 'message_deleted', 12, { moderated: false })]);
  const c = s.get(DM);
  assert.equal(c.unreadCount, 2);
  assert.deepEqual(byId(s, 12).deleted, { by: 'bob', ts: 105 });
  assert.equal(byId(s, 12).text, '');
  assert.equal(byId(s, 12).reactions, undefined, 'a tombstone has no reactions');
  assert.equal(c.lastMessage.message_id, '11', 'the preview falls back to the previous message');
  // A reply's quote of a deleted message is emptied and marked.
  s.apply([e(6, 'message_deleted', 11)]);
  assert.equal(s.get(DM).lastMessage.message_id, '10');
  assert.deepEqual(byId(s, 12).reply_to, { message_id: '11', from: 'bob', excerpt: '', deleted: true });
  assert.equal(s.get(DM).unreadCount, 1);
  // Deleting again (a page that already had the tombstone, then the event) changes nothing.
  s.apply([e(7, 'message_deleted', 11)]);
  assert.equal(s.get(DM).unreadCount, 1);
});

test('a delete of a read or own message leaves the unread count as it was', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), m(2, 11, 'bob'), m(3, 12, 'alice'), m(4, 13, 'bob')]);
  assert.equal(s.get(DM).unreadCount, 1);
  s.apply([e(5, 'message_deleted', 11)]);
  assert.equal(s.get(DM).unreadCount, 1, 'message 11 was read (alice wrote after it)');
  s.apply([e(6, 'message_deleted', 12, { actor: 'alice' })]);
  assert.equal(s.get(DM).unreadCount, 1, 'an own message is never unread');
  s.apply([e(7, 'message_deleted', 13)]);
  assert.equal(s.get(DM).unreadCount, 0);
  assert.equal(s.get(DM).lastMessage.message_id, '10');
  // Every message gone: the preview stays the tombstone of the last one it showed.
  s.apply([e(8, 'message_deleted', 10)]);
  assert.equal(s.get(DM).lastMessage.message_id, '10');
  assert.ok(s.get(DM).lastMessage.deleted);
});

test('a moderator deleting a message the store does not hold still lowers the unread count', () => {
  const s = store();
  const g = (seq, id) => ({ kind: 'message', seq, message: { ...view(seq, id, 'carol'), conversation_id: G, to: G } });
  s.apply([g(1, 20), g(2, 21)]);
  assert.equal(s.get(G).unreadCount, 2);
  s.apply([{ kind: 'event', seq: 3, event: { seq: 3, event: 'message_deleted', event_id: 'x', conversation_id: G, actor: 'bob', ts: 3, message_id: '19', moderated: true } }]);
  assert.equal(s.get(G).unreadCount, 1);
  assert.equal(s.get(G).lastMessage.message_id, '21');
});

test('reactions are counted per emoji in the order they came, with mine from the actor', () => {
  const s = store();
  s.apply([m(1, 10, 'bob')]);
  s.apply([
    e(2, 'reaction_added', 10, { emoji: '👍', actor: 'bob' }),
    e(3, 'reaction_added', 10, { emoji: '🎉', actor: 'carol' }),
    e(4, 'reaction_added', 10, { emoji: '👍', actor: 'alice' }),
  ]);
  assert.deepEqual(byId(s, 10).reactions, [{ emoji: '👍', count: 2, mine: true }, { emoji: '🎉', count: 1, mine: false }]);
  s.apply([e(5, 'reaction_removed', 10, { emoji: '👍', actor: 'alice' }), e(6, 'reaction_removed', 10, { emoji: '🎉', actor: 'carol' })]);
  assert.deepEqual(byId(s, 10).reactions, [{ emoji: '👍', count: 1, mine: false }]);
  s.apply([e(7, 'reaction_removed', 10, { emoji: '👍', actor: 'bob' })]);
  assert.equal('reactions' in byId(s, 10), false, 'no reactions: the field is absent, as on the wire');
  // The user's own reaction is counted once, however often it is applied.
  s.apply([e(8, 'reaction_added', 10, { emoji: '❤️', actor: 'alice' }), e(9, 'reaction_added', 10, { emoji: '❤️', actor: 'alice' })]);
  assert.deepEqual(byId(s, 10).reactions, [{ emoji: '❤️', count: 1, mine: true }]);
  // The preview is the same message and changes with it.
  assert.deepEqual(s.get(DM).lastMessage.reactions, [{ emoji: '❤️', count: 1, mine: true }]);
});

test('changes to a message the store does not hold are passed over', () => {
  const s = store();
  s.apply([m(1, 10, 'bob')]);
  s.apply([e(2, 'message_edited', 9, { text: 'x' }), e(3, 'reaction_added', 9, { emoji: '👍' })]);
  assert.deepEqual(s.get(DM).messages.map((x) => x.message_id), ['10']);
  assert.equal(byId(s, 10).text, 't10');
});

test('message_state replaces the copy as of its seq, and its event then changes nothing', () => {
  const s = store();
  s.apply([m(1, 10, 'alice'), m(2, 11, 'bob')]);
  s.messageState({ ...view(1, 10, 'alice'), text: 'new', edited_ts: 50 }, 3);
  assert.equal(byId(s, 10).text, 'new');
  s.apply([e(3, 'message_edited', 10, { text: 'new', actor: 'alice' })]);
  assert.equal(byId(s, 10).text, 'new');
  assert.equal(byId(s, 10).edited_ts, 50, 'the event of the answer is not applied again');
  // Bob's reaction (seq 4) is in the answer to alice's (seq 5): neither is counted again.
  s.messageState({ ...view(2, 11, 'bob'), reactions: [{ emoji: '👍', count: 2, mine: true }] }, 5);
  assert.deepEqual(byId(s, 11).reactions, [{ emoji: '👍', count: 2, mine: true }]);
  s.apply([e(4, 'reaction_added', 11, { emoji: '👍', actor: 'bob' }), e(5, 'reaction_added', 11, { emoji: '👍', actor: 'alice' })]);
  assert.deepEqual(byId(s, 11).reactions, [{ emoji: '👍', count: 2, mine: true }]);
  s.apply([e(6, 'reaction_added', 11, { emoji: '👍', actor: 'carol' })]);
  assert.equal(byId(s, 11).reactions[0].count, 3, 'a change after the answer applies');
  s.messageState({ ...view(1, 10, 'alice'), text: '', deleted: { by: 'alice', ts: 60 } }, 7);
  assert.deepEqual(byId(s, 10).deleted, { by: 'alice', ts: 60 });
  assert.equal(s.get(DM).lastMessage.message_id, '11');
});

test('message_state without seq (the command changed nothing) leaves the copy as it is', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), e(2, 'reaction_added', 10, { emoji: '👍' })]);
  const copy = byId(s, 10);
  const changes = [];
  s.subscribe((ids) => changes.push(ids));
  // Read before bob's reaction came in, or what a repeated command found: not the copy's business.
  s.messageState(view(1, 10, 'bob'));
  s.messageState({ ...view(1, 10, 'bob'), text: 'other', edited_ts: 9 }, undefined);
  assert.equal(byId(s, 10), copy);
  assert.deepEqual(changes, []);
  // Nor is a message not known here added from it.
  s.messageState(view(3, 12, 'bob'));
  assert.equal(byId(s, 12), undefined);
  s.apply([e(3, 'reaction_added', 10, { emoji: '👍', actor: 'carol' })]);
  assert.equal(byId(s, 10).reactions[0].count, 2);
});

test('the client sends edit, delete, react and unreact, retries an edit with the same client_msg_id, and sends replies by conversation', async () => {
  const server = new FakeServer();
  const c = fakeClient(server);
  const first = await server.socket(1);
  first.accept('alice', 0, 3);
  first.frame({ type: 'message', ...view(1, 10, 'bob') });
  assert.equal(c.protocol, 3);

  const edit = c.edit(DM, '10', 'fixed');
  const written = await waitFor(() => first.written('edit')[0], 'the edit');
  assert.equal(written.message_id, '10');
  assert.match(written.client_msg_id, /^[0-9a-f]{32}$/);
  // The connection goes before the answer: the edit is written again, with the same id.
  first.hangUp(1006);
  const second = await server.socket(2);
  second.accept('alice', 1, 3);
  const again = await waitFor(() => second.written('edit')[0], 'the edit again');
  assert.equal(again.client_msg_id, written.client_msg_id);
  second.frame({ type: 'message_state', req_id: again.req_id, client_msg_id: again.client_msg_id, duplicate: true, message: view(1, 10, 'bob') });
  assert.equal((await edit).duplicate, true);

  const react = c.react(DM, '10', '👍');
  const r = await waitFor(() => second.written('react')[0], 'the react');
  assert.deepEqual({ ...r, req_id: undefined }, { type: 'react', conversation_id: DM, message_id: '10', emoji: '👍', req_id: undefined });
  second.frame({ type: 'message_state', req_id: r.req_id, duplicate: false, seq: 2, message: { ...view(1, 10, 'bob'), reactions: [{ emoji: '👍', count: 1, mine: true }] } });
  await react;
  assert.deepEqual(c.conversations.get(DM).messages[0].reactions, [{ emoji: '👍', count: 1, mine: true }]);

  const unreact = c.unreact(DM, '10', '👍');
  const u = await waitFor(() => second.written('unreact')[0], 'the unreact');
  second.frame({ type: 'message_state', req_id: u.req_id, duplicate: false, seq: 3, message: view(1, 10, 'bob') });
  await unreact;
  assert.equal(c.conversations.get(DM).messages[0].reactions, undefined);
  // The events of both answers follow, live: the copy already shows them.
  second.frame({ type: 'event', ...e(2, 'reaction_added', 10, { emoji: '👍', actor: 'alice' }).event });
  second.frame({ type: 'event', ...e(3, 'reaction_removed', 10, { emoji: '👍', actor: 'alice' }).event });
  await waitFor(() => c.lastSeq === 3, 'the events applied');
  assert.equal(c.conversations.get(DM).messages[0].reactions, undefined);

  const refused = c.delete(DM, '10');
  const d = await waitFor(() => second.written('delete')[0], 'the delete');
  second.frame({ type: 'error', req_id: d.req_id, code: 'not_author', message: 'no', retryable: false });
  await assert.rejects(refused, (error) => error.code === 'not_author');

  // A reply to a user goes by conversation id, and the own copy shows the quote.
  const sent = c.send('bob', 'yes', { replyTo: '10' });
  const s = await waitFor(() => second.written('send')[0], 'the reply');
  assert.equal(s.conversation_id, DM);
  assert.equal(s.reply_to, '10');
  second.frame({ type: 'ack', client_msg_id: s.client_msg_id, conversation_id: DM, message_id: '12', seq: 4, ts: 5, duplicate: false });
  await sent;
  const own = c.conversations.get(DM).messages.find((x) => x.message_id === '12');
  assert.deepEqual(own.reply_to, { message_id: '10', from: 'bob', excerpt: 't10' });
  c.close();
});

test('the list read from the server replaces a tombstone preview by its own, older one', () => {
  const s = store();
  s.apply([m(5, 12, 'bob'), e(6, 'message_deleted', 12)]);
  assert.ok(s.get(DM).lastMessage.deleted, 'nothing older is known here');
  s.summaries([{ conversation_id: DM, kind: 'direct', peer: 'bob', peer_read_marker: '0', member_count: 2, last_message: view(4, 11, 'bob'), unread_count: 1, read_marker: '0', activity_seq: 5 }]);
  assert.equal(s.get(DM).lastMessage.message_id, '11');
});

test('a view that already shows changes (a sync page, a history page) does not get them again', () => {
  const s = store();
  const shown = view(1, 10, 'bob', { text: 'v2', edited_ts: 3, reactions: [{ emoji: '👍', count: 2, mine: false }] });
  s.apply([{ kind: 'message', seq: 1, message: shown, asOf: 4 }, e(2, 'message_edited', 10, { text: 'v1' }), e(3, 'reaction_added', 10, { emoji: '👍' }), e(4, 'reaction_added', 10, { emoji: '👍', actor: 'carol' })]);
  assert.equal(byId(s, 10).text, 'v2');
  assert.deepEqual(byId(s, 10).reactions, [{ emoji: '👍', count: 2, mine: false }]);
  s.apply([e(5, 'reaction_added', 10, { emoji: '👍', actor: 'dave' })]);
  assert.equal(byId(s, 10).reactions[0].count, 3, 'a later change applies');
});

test('a reaction a history page already shows is not counted again when it arrives after the page; one above its last_seq is', () => {
  const s = store();
  s.apply([m(1, 9, 'bob')]);
  // The page was read at seq 3: it shows bob's reaction (seq 2), not carol's (seq 4).
  s.history(DM, [view(1, 9, 'bob', { reactions: [{ emoji: '🎉', count: 1, mine: false }] }), view(0, 8, 'bob')], 3);
  assert.deepEqual(byId(s, 9).reactions, [{ emoji: '🎉', count: 1, mine: false }], 'the newer view replaces the live copy');
  s.apply([e(2, 'reaction_added', 9, { emoji: '🎉' }), e(3, 'message_edited', 8, { text: 'x' })]);
  assert.equal(byId(s, 9).reactions[0].count, 1, 'seq 2 is in the page');
  s.apply([e(4, 'reaction_added', 9, { emoji: '🎉', actor: 'carol' })]);
  assert.equal(byId(s, 9).reactions[0].count, 2, 'seq 4 is above the page');
  // An older page (read at seq 3 again) does not undo what came since.
  s.history(DM, [view(1, 9, 'bob', { reactions: [{ emoji: '🎉', count: 1, mine: false }] })], 3);
  assert.equal(byId(s, 9).reactions[0].count, 2);
  // Without last_seq (protocol 2) a view is as of its own seq.
  s.history(DM, [view(0, 7, 'bob')]);
  s.apply([e(5, 'reaction_added', 7, { emoji: '👀' })]);
  assert.equal(byId(s, 7).reactions[0].count, 1);
});

test('a reply\'s quote follows a newer view of what it quotes, not an older event', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), m(2, 11, 'alice', { reply_to: { message_id: '10', from: 'bob', excerpt: 't10' } })]);
  s.history(DM, [view(1, 10, 'bob', { text: 'v2', edited_ts: 4 })], 4);
  assert.equal(byId(s, 11).reply_to.excerpt, 'v2');
  s.apply([e(3, 'message_edited', 10, { text: 'v1' })]);
  assert.equal(byId(s, 10).text, 'v2');
  assert.equal(byId(s, 11).reply_to.excerpt, 'v2');
  // A reply that comes after what it quotes was seen newer shows the newer quote.
  s.history(DM, [view(3, 12, 'bob', { reply_to: { message_id: '10', from: 'bob', excerpt: 't10' } })], 3);
  assert.equal(byId(s, 12).reply_to.excerpt, 'v2');
  s.apply([e(5, 'message_edited', 10, { text: 'v3' })]);
  assert.equal(byId(s, 11).reply_to.excerpt, 'v3');
  assert.equal(byId(s, 12).reply_to.excerpt, 'v3');
});

test('a conversation list counts as of its last_seq: a delete or read marker it shows changes the count no more', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), m(2, 11, 'bob'), m(3, 12, 'bob')]);
  assert.equal(s.get(DM).unreadCount, 3);
  // The list was read at seq 6: message 11 deleted (seq 5), so two unread; 12 deleted after it (seq 7).
  const summary = { conversation_id: DM, kind: 'direct', peer: 'bob', peer_read_marker: '0', member_count: 2, last_message: view(3, 12, 'bob', { reactions: [{ emoji: '👍', count: 1, mine: false }] }), unread_count: 2, read_marker: '0', activity_seq: 3 };
  s.summaries([summary], 6);
  assert.equal(s.get(DM).unreadCount, 2);
  s.apply([e(4, 'read_marker', 9, { actor: 'alice', unread_count: 3 }), e(5, 'message_deleted', 11), e(6, 'reaction_added', 12, { emoji: '👍' })]);
  assert.equal(s.get(DM).unreadCount, 2, 'seqs 4 and 5 are in the list');
  assert.ok(byId(s, 11).deleted, 'the copy the list did not bring still becomes a tombstone');
  assert.equal(byId(s, 12).reactions[0].count, 1, 'the list\'s preview, as of seq 6, showed the reaction already');
  s.apply([e(7, 'message_deleted', 12)]);
  assert.equal(s.get(DM).unreadCount, 1, 'seq 7 is above the list');
  assert.equal(s.get(DM).lastMessage.message_id, '10');
  // Without last_seq (protocol 2) the list says nothing of what it shows.
  const g = { conversation_id: G, kind: 'group', title: 'T', role: 'member', member_count: 3, last_message: null, unread_count: 0, read_marker: '0', activity_seq: 8 };
  s.summaries([g]);
  s.apply([{ kind: 'event', seq: 8, event: { seq: 8, event: 'group_renamed', event_id: 'r', conversation_id: G, actor: 'bob', ts: 8, title: 'U' } }]);
  assert.equal(s.get(G).title, 'U');
});

test('a message synced after it was deleted is neither unread nor the preview; changes to messages keep the list order', () => {
  const s = store();
  s.apply([m(1, 10, 'bob')]);
  s.apply([{ kind: 'message', seq: 2, message: view(2, 11, 'bob', { text: '', deleted: { by: 'bob', ts: 3 } }), asOf: 3 }, e(3, 'message_deleted', 11)]);
  const c = s.get(DM);
  assert.equal(c.unreadCount, 1);
  assert.equal(c.lastMessage.message_id, '10');
  assert.ok(byId(s, 11).deleted);
  s.apply([{ kind: 'event', seq: 4, event: { seq: 4, event: 'group_renamed', event_id: 'g', conversation_id: G, actor: 'bob', ts: 4, title: 'T' } }]);
  assert.deepEqual(s.list().map((x) => x.id), [G, DM]);
  s.apply([e(5, 'reaction_added', 10, { emoji: '👍' }), e(6, 'message_edited', 10, { text: 'x' })]);
  assert.deepEqual(s.list().map((x) => x.id), [G, DM], 'a reaction or an edit does not bring a conversation up');
});

test('a sync page\'s views count as of its last_seq', async () => {
  const server = new FakeServer();
  const c = fakeClient(server);
  const socket = await server.socket(1);
  socket.accept('alice', 3, 3);
  const sync = await waitFor(() => socket.written('sync')[0], 'a sync');
  const shown = view(1, 10, 'bob', { reactions: [{ emoji: '👍', count: 2, mine: true }] });
  socket.frame({
    type: 'sync', req_id: sync.req_id, messages: [shown], has_more: false, last_seq: 3,
    events: [e(2, 'reaction_added', 10, { emoji: '👍' }).event, e(3, 'reaction_added', 10, { emoji: '👍', actor: 'alice' }).event],
  });
  await waitFor(() => c.lastSeq === 3, 'the page applied');
  assert.deepEqual(c.conversations.get(DM).messages[0].reactions, [{ emoji: '👍', count: 2, mine: true }]);
  socket.frame({ type: 'event', ...e(4, 'reaction_removed', 10, { emoji: '👍' }).event });
  assert.deepEqual(c.conversations.get(DM).messages[0].reactions, [{ emoji: '👍', count: 1, mine: true }]);
  c.close();
});
