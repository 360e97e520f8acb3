/**
 * The sends not acked yet. Each keeps its `client_msg_id` for its whole life, so every resend
 * is idempotent: the server stores it once and answers a resend of a committed message with
 * `duplicate: true`, which settles the send like any ack.
 *
 * A send is kept in the store before it is written; it is written again, in submission order,
 * after every reconnect; again after a retryable error (`unavailable`, `rate_limited`,
 * `internal`), with backoff; and again at once when the server reports an `internal` error
 * without ids (its session restarted and may have dropped what it was working on). It leaves
 * the outbox when it is acked, or refused for good (the promise then rejects with the server's
 * error).
 */
import { backoffDelay, type BackoffOptions } from './backoff.js';
import { ClientError, ServerError } from './errors.js';
import { frameTooLarge, MAX_FRAME_BYTES } from './limits.js';
import type { CommandKind, ServerFrame } from './protocol.js';
import type { ClientStore, PendingSend } from './store.js';

export type AckFrame = Extract<ServerFrame, { type: 'ack' }>;
export type ErrorFrame = Extract<ServerFrame, { type: 'error' }>;

/** A committed send. */
export interface Ack {
  clientMsgId: string;
  messageId: string;
  conversationId: string;
  /** The sender's seq for the message. */
  seq: number;
  ts: number;
  /** The message had already been committed by an earlier attempt. */
  duplicate: boolean;
}

interface Entry {
  send: PendingSend;
  onWire: boolean;
  retries: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  waiters: { resolve(ack: Ack): void; reject(error: Error): void }[];
}

/** Where the outbox writes and how it tells what happened to a send. */
export interface OutboxHost {
  write(command: CommandKind): boolean;
  connected(): boolean;
  /** A send was committed (also for sends restored from the store, which have no promise). */
  acked(send: PendingSend, ack: Ack): void;
  /** A send was refused for good. */
  failed(send: PendingSend, error: ServerError): void;
}

/** Whether `to` names a conversation (`alice:bob`, `g~…`) rather than a user. */
export function isConversationId(to: string): boolean {
  return to.includes(':') || to.startsWith('g~');
}

export function sendCommand(send: PendingSend): CommandKind {
  const { to, text, clientMsgId: client_msg_id, replyTo } = send;
  if (!isConversationId(to)) return { type: 'send', to, text, client_msg_id };
  return { type: 'send', conversation_id: to, text, client_msg_id, ...(replyTo ? { reply_to: replyTo } : {}) };
}

/**
 * A fresh `client_msg_id`: 128 random bits, from `crypto.getRandomValues` where there is one
 * (browsers, insecure contexts included, and Node), else from `Math.random` (React Native
 * without a polyfill): uniqueness per user is all the server needs.
 */
export function newClientMsgId(): string {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: { getRandomValues?(array: Uint8Array): Uint8Array } }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class Outbox {
  private readonly entries = new Map<string, Entry>();
  private submitted = 0;
  /** Resolves once the sends the store kept from an earlier run are back in the outbox. */
  readonly loaded: Promise<void>;

  constructor(private readonly store: ClientStore, private readonly host: OutboxHost, private readonly backoff: BackoffOptions) {
    this.loaded = store.pendingSends().then((sends) => {
      for (const send of sends.sort((a, b) => a.createdAt - b.createdAt)) {
        if (!this.entries.has(send.clientMsgId)) this.entries.set(send.clientMsgId, this.entry(send));
      }
      if (this.host.connected()) this.writeAll();
    });
  }

  private entry(send: PendingSend): Entry {
    return { send, onWire: false, retries: 0, timer: undefined, waiters: [] };
  }

  /** The sends not acked yet, oldest first. */
  pending(): PendingSend[] {
    return [...this.entries.values()].map((e) => ({ ...e.send }));
  }

  /** Keeps the send, writes it when connected, and resolves with its ack. */
  submit(to: string, text: string, clientMsgId = newClientMsgId(), replyTo?: string): Promise<Ack> {
    // The server would close the connection (1009) on every attempt: refuse it here, for good.
    if (frameTooLarge(JSON.stringify(sendCommand({ clientMsgId, to, text, ...(replyTo ? { replyTo } : {}), createdAt: 0 })))) {
      return Promise.reject(new ClientError('frame_too_large', `the send is over ${MAX_FRAME_BYTES} bytes`));
    }
    const existing = this.entries.get(clientMsgId);
    if (existing) return new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    // Strictly increasing, so that sends submitted in one millisecond keep their order.
    const createdAt = Math.max(Date.now(), this.submitted + 1);
    this.submitted = createdAt;
    const entry = this.entry({ clientMsgId, to, text, ...(replyTo ? { replyTo } : {}), createdAt });
    this.entries.set(clientMsgId, entry);
    const result = new Promise<Ack>((resolve, reject) => entry.waiters.push({ resolve, reject }));
    void this.store.putSend(entry.send).then(
      () => this.transmit(entry),
      () => this.transmit(entry), // still try to deliver it: it only will not survive a restart
    );
    return result;
  }

  /** After `welcome`: writes every send, in submission order. */
  writeAll(): void {
    for (const entry of this.entries.values()) {
      clearTimeout(entry.timer);
      entry.timer = undefined;
      entry.onWire = false;
      this.transmit(entry);
    }
  }

  /** The connection went: nothing is on the wire any more, and retries wait for `welcome`. */
  disconnected(): void {
    for (const entry of this.entries.values()) {
      clearTimeout(entry.timer);
      entry.timer = undefined;
      entry.onWire = false;
    }
  }

  ack(frame: AckFrame): PendingSend | undefined {
    const ack: Ack = {
      clientMsgId: frame.client_msg_id,
      messageId: frame.message_id,
      conversationId: frame.conversation_id,
      seq: frame.seq,
      ts: frame.ts,
      duplicate: frame.duplicate,
    };
    return this.settle(frame.client_msg_id, ack);
  }

  /**
   * The user's own message came back (a sync, or a copy) while its send still waited for an
   * ack: the earlier attempt was committed, so the send is settled as a duplicate.
   */
  committed(message: { client_msg_id?: string | null; message_id: string; conversation_id: string; seq: number; ts: number }): void {
    const id = message.client_msg_id;
    if (!id || !this.entries.has(id)) return;
    this.settle(id, { clientMsgId: id, messageId: message.message_id, conversationId: message.conversation_id, seq: message.seq, ts: message.ts, duplicate: true });
  }

  /** Handles an `error` frame that concerns sends; false when it concerns none. */
  error(frame: ErrorFrame): boolean {
    if (frame.client_msg_id == null) {
      if (frame.code === 'internal' && frame.req_id == null) {
        // The session restarted: what was on the wire may not have been carried out.
        for (const entry of this.entries.values()) if (entry.onWire) this.retry(entry, 0);
      }
      return false;
    }
    const entry = this.entries.get(frame.client_msg_id);
    if (!entry) return false;
    if (frame.retryable) {
      entry.retries += 1;
      this.retry(entry, backoffDelay(entry.retries, this.backoff));
    } else {
      this.entries.delete(frame.client_msg_id);
      void this.store.deleteSend(frame.client_msg_id).catch(() => undefined);
      const error = new ServerError(frame);
      for (const waiter of entry.waiters) waiter.reject(error);
      this.host.failed(entry.send, error);
    }
    return true;
  }

  private retry(entry: Entry, delay: number): void {
    entry.onWire = false;
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      this.transmit(entry);
    }, delay);
  }

  private transmit(entry: Entry): void {
    if (entry.onWire || entry.timer !== undefined || this.entries.get(entry.send.clientMsgId) !== entry) return;
    entry.onWire = this.host.write(sendCommand(entry.send));
  }

  private settle(clientMsgId: string, ack: Ack): PendingSend | undefined {
    const entry = this.entries.get(clientMsgId);
    if (!entry) return undefined;
    this.entries.delete(clientMsgId);
    clearTimeout(entry.timer);
    void this.store.deleteSend(clientMsgId).catch(() => undefined);
    for (const waiter of entry.waiters) waiter.resolve(ack);
    this.host.acked(entry.send, ack);
    return entry.send;
  }
}
