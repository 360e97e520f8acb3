/**
 * Where the client keeps what must outlive a page or a process: the sends not acked yet (the
 * outbox) and the user's position in their stream (`last_seq`). One store holds one user's
 * state: give each user (and tenant) a store of its own.
 *
 * {@link MemoryStore} keeps it for the life of the client; `IndexedDbStore` (browsers) keeps it
 * across reloads. Any other backend implements {@link ClientStore}.
 */

/** A send not acked yet, as the outbox keeps it. */
export interface PendingSend {
  /** The idempotency key: the same for every attempt of this send. */
  clientMsgId: string;
  /** A user id (a direct message) or a conversation id (`alice:bob`, `g~…`). */
  to: string;
  text: string;
  /** Protocol 3: the message this one replies to (then `to` is a conversation id). */
  replyTo?: string;
  /** When it was submitted (ms since the epoch); resends go in this order. */
  createdAt: number;
}

export interface ClientStore {
  /** The highest seq of the user's stream the client has applied (0 when none). */
  getLastSeq(): Promise<number>;
  setLastSeq(seq: number): Promise<void>;
  /** Every send not acked yet, in any order. */
  pendingSends(): Promise<PendingSend[]>;
  putSend(send: PendingSend): Promise<void>;
  deleteSend(clientMsgId: string): Promise<void>;
}

/** A store that lives as long as the object: the default. */
export class MemoryStore implements ClientStore {
  private lastSeq = 0;
  private readonly sends = new Map<string, PendingSend>();

  async getLastSeq(): Promise<number> {
    return this.lastSeq;
  }

  async setLastSeq(seq: number): Promise<void> {
    this.lastSeq = seq;
  }

  async pendingSends(): Promise<PendingSend[]> {
    return [...this.sends.values()].map((send) => ({ ...send }));
  }

  async putSend(send: PendingSend): Promise<void> {
    this.sends.set(send.clientMsgId, { ...send });
  }

  async deleteSend(clientMsgId: string): Promise<void> {
    this.sends.delete(clientMsgId);
  }
}
