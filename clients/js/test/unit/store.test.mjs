import { test } from 'node:test';
import assert from 'node:assert/strict';
import { indexedDB } from 'fake-indexeddb';
import { IndexedDbStore, MemoryStore } from '../../dist/index.js';

// One contract, both stores.
for (const [name, make] of [
  ['MemoryStore', () => new MemoryStore()],
  ['IndexedDbStore', () => new IndexedDbStore(`peroxo-test-${Math.random()}`, indexedDB)],
]) {
  test(`${name} keeps last_seq and pending sends`, async () => {
    const store = make();
    assert.equal(await store.getLastSeq(), 0);
    await store.setLastSeq(42);
    assert.equal(await store.getLastSeq(), 42);
    await store.putSend({ clientMsgId: 'a', to: 'bob', text: 'one', createdAt: 1 });
    await store.putSend({ clientMsgId: 'b', to: 'g~0123456789abcdef01234567', text: 'two', createdAt: 2 });
    await store.deleteSend('a');
    assert.deepEqual(await store.pendingSends(), [{ clientMsgId: 'b', to: 'g~0123456789abcdef01234567', text: 'two', createdAt: 2 }]);
  });
}

test('IndexedDbStore survives reopening the database', async () => {
  const name = `peroxo-test-${Math.random()}`;
  const first = new IndexedDbStore(name, indexedDB);
  await first.setLastSeq(7);
  await first.putSend({ clientMsgId: 'kept', to: 'bob', text: 'x', createdAt: 1 });
  await first.close();
  const second = new IndexedDbStore(name, indexedDB);
  assert.equal(await second.getLastSeq(), 7);
  assert.equal((await second.pendingSends())[0].clientMsgId, 'kept');
  await second.close();
});
