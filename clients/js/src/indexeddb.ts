/**
 * A {@link ClientStore} in IndexedDB, for browsers: the outbox and `last_seq` survive a reload,
 * so sends typed before a reload still go out, once, and the stream resumes where it was.
 */
import type { ClientStore, PendingSend } from './store.js';

const SENDS = 'sends';
const META = 'meta';

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class IndexedDbStore implements ClientStore {
  private readonly db: Promise<IDBDatabase>;

  /**
   * @param name the database's name: one per user, for example `peroxo:default:alice`.
   * @param factory `indexedDB` by default.
   */
  constructor(name: string, factory: IDBFactory = globalThis.indexedDB) {
    const open = factory.open(name, 1);
    open.onupgradeneeded = () => {
      open.result.createObjectStore(SENDS, { keyPath: 'clientMsgId' });
      open.result.createObjectStore(META);
    };
    this.db = done(open);
  }

  private async run<T>(store: string, mode: IDBTransactionMode, action: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const tx = (await this.db).transaction(store, mode);
    const result = done(action(tx.objectStore(store)));
    result.catch(() => undefined); // its failure also fails the transaction, reported below
    // A write is durable once its transaction completes, not when its request succeeds.
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
    return result;
  }

  async getLastSeq(): Promise<number> {
    const value = await this.run(META, 'readonly', (s) => s.get('last_seq'));
    return typeof value === 'number' ? value : 0;
  }

  async setLastSeq(seq: number): Promise<void> {
    await this.run(META, 'readwrite', (s) => s.put(seq, 'last_seq'));
  }

  pendingSends(): Promise<PendingSend[]> {
    return this.run(SENDS, 'readonly', (s) => s.getAll());
  }

  async putSend(send: PendingSend): Promise<void> {
    await this.run(SENDS, 'readwrite', (s) => s.put(send));
  }

  async deleteSend(clientMsgId: string): Promise<void> {
    await this.run(SENDS, 'readwrite', (s) => s.delete(clientMsgId));
  }

  /** Closes the database. */
  async close(): Promise<void> {
    (await this.db).close();
  }
}
