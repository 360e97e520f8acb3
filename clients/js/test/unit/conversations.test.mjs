import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConversationStore } from '../../dist/index.js';

const G = 'g~0123456789abcdef01234567';
const m = (seq, id, from, conversation_id = 'alice:bob') => ({ kind: 'message', seq, message: { message_id: String(id), conversation_id, from, to: from === 'alice' ? 'bob' : 'alice', text: `t${id}`, ts: seq, seq } });
const e = (seq, event, fields) => ({ kind: 'event', seq, event: { seq, event, event_id: String(seq), conversation_id: G, actor: 'bob', ts: seq, ...fields } });

function store() {
  const s = new ConversationStore();
  s.me = 'alice';
  return s;
}

test('messages from others count as unread; an own message reads the conversation', () => {
  const s = store();
  const changes = [];
  s.subscribe((ids) => changes.push(ids));
  s.apply([m(1, 10, 'bob'), m(2, 11, 'bob')]);
  let c = s.get('alice:bob');
  assert.equal(c.kind, 'direct');
  assert.equal(c.peer, 'bob');
  assert.equal(c.unreadCount, 2);
  assert.equal(c.lastMessage.message_id, '11');
  s.apply([m(3, 12, 'alice')]);
  c = s.get('alice:bob');
  assert.equal(c.unreadCount, 0);
  assert.equal(c.readMarker, '12');
  assert.deepEqual(changes, [['alice:bob'], ['alice:bob']]);
  assert.equal(s.totalUnread(), 0);
});

test('group events change title, members, roles; leaving removes the group', () => {
  const s = store();
  s.apply([e(1, 'group_created', { title: 'Team', member_count: 2 })]);
  s.members(G, [{ user: 'alice', role: 'member', joined_ts: 1 }, { user: 'bob', role: 'owner', joined_ts: 1 }]);
  s.apply([
    e(2, 'members_added', { users: ['carol'] }),
    e(3, 'role_changed', { user: 'alice', role: 'admin' }),
    e(4, 'group_renamed', { title: 'Team B' }),
    e(5, 'member_left', { user: 'carol' }),
    m(6, 20, 'bob', G),
  ]);
  const c = s.get(G);
  assert.equal(c.kind, 'group');
  assert.equal(c.title, 'Team B');
  assert.equal(c.role, 'admin');
  assert.equal(c.memberCount, 2);
  assert.deepEqual([...c.members.keys()].sort(), ['alice', 'bob']);
  assert.equal(c.unreadCount, 1);
  assert.equal(c.activitySeq, 6);
  s.apply([e(7, 'member_left', { user: 'alice' })]);
  assert.equal(s.get(G), undefined);
});

test('read markers and receipts move the read state', () => {
  const s = store();
  s.apply([m(1, 10, 'bob'), m(2, 11, 'bob')]);
  s.apply([{ kind: 'event', seq: 3, event: { seq: 3, event: 'read_marker', event_id: '1', conversation_id: 'alice:bob', actor: 'alice', ts: 3, message_id: '10', unread_count: 1 } }]);
  assert.equal(s.get('alice:bob').unreadCount, 1);
  assert.equal(s.get('alice:bob').readMarker, '10');
  s.apply([{ kind: 'event', seq: 4, event: { seq: 4, event: 'read_receipt', event_id: '2', conversation_id: 'alice:bob', actor: 'bob', ts: 4, message_id: '11' } }]);
  assert.equal(s.get('alice:bob').peerReadMarker, '11');
  s.receipt(G, 'bob', '20');
  assert.equal(s.get(G).receipts.get('bob'), '20');
});

test('a summary of the list is not counted again by the entries it covers', () => {
  const s = store();
  const last = { message_id: '11', conversation_id: 'alice:bob', from: 'bob', to: 'alice', text: 'x', ts: 2, seq: 2 };
  s.summaries([{ conversation_id: 'alice:bob', kind: 'direct', peer: 'bob', peer_read_marker: '0', member_count: 2, last_message: last, unread_count: 2, read_marker: '0', activity_seq: 2 }]);
  s.apply([m(2, 11, 'bob'), m(3, 12, 'bob')]);
  assert.equal(s.get('alice:bob').unreadCount, 3);
  assert.deepEqual(s.get('alice:bob').messages.map((x) => x.message_id), ['11', '12']);
  s.history('alice:bob', [{ ...last, message_id: '9', seq: 1 }]);
  assert.deepEqual(s.get('alice:bob').messages.map((x) => x.message_id), ['9', '11', '12']);
  assert.deepEqual(s.list().map((c) => c.id), ['alice:bob']);
});

test('a snapshot restores the list, its counts and previews, and the stream carries on from it', () => {
  const s = store();
  s.apply([e(1, 'group_created', { title: 'Team', member_count: 3 }), m(2, 10, 'bob'), m(3, 11, 'bob')]);
  s.add('alice:carol');
  const kept = JSON.parse(JSON.stringify(s.snapshot()));

  const again = store();
  again.restore(kept);
  assert.deepEqual(again.list().map((c) => c.id), s.list().map((c) => c.id));
  const dm = again.get('alice:bob');
  assert.equal(dm.unreadCount, 2);
  assert.equal(dm.lastMessage.text, 't11');
  assert.deepEqual(dm.messages.map((x) => x.message_id), ['11']);
  assert.equal(again.get(G).title, 'Team');
  assert.equal(again.get(G).memberCount, 3);
  assert.equal(again.get('alice:carol').peer, 'carol');
  // An entry the snapshot already counted changes nothing; a later one counts.
  again.apply([m(3, 11, 'bob'), m(4, 12, 'bob')]);
  assert.equal(again.get('alice:bob').unreadCount, 3);

  // What the stream already put in the store wins; malformed parts are left out.
  const live = store();
  live.apply([m(1, 10, 'bob')]);
  live.restore({ version: 1, conversations: [{ id: 'alice:bob', unreadCount: 9 }, { id: 42 }, null, { id: 'nonsense' }] });
  assert.equal(live.get('alice:bob').unreadCount, 1);
  assert.equal(live.list().length, 1);
  live.restore({ version: 2, conversations: [{ id: 'alice:dave' }] });
  assert.equal(live.get('alice:dave'), undefined);
});

test('the member list read from the server gives the user their role', () => {
  const s = store();
  s.apply([e(1, 'members_added', { users: ['alice'] })]);
  assert.equal(s.get(G).role, 'member');
  s.members(G, [{ user: 'alice', role: 'admin', joined_ts: 1 }, { user: 'bob', role: 'owner', joined_ts: 1 }]);
  assert.equal(s.get(G).role, 'admin');
});
