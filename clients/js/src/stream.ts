/**
 * The user's stream, by seq: every message they send or receive and, in protocol 2, every
 * event (group changes, read markers, read receipts) has a seq in one gapless stream. Entries
 * reach the client live, through `sync`, or (its own sends) through `ack`; they may arrive twice
 * and, across nodes, out of order. The engine turns that into each seq applied exactly once, in
 * seq order, and keeps the position (`last_seq`) in the store.
 *
 * It syncs, as docs/PROTOCOL.md asks: after `welcome` when `last_seq` is past its position,
 * when a live entry skips ahead (the entry waits until the gap is filled), and on `sync_hint`.
 * One page is in flight at a time and a cycle pages on while `has_more` is true. A page names
 * every entry this connection may see after `after_seq`: seqs it does not show (a protocol-1
 * connection does not see group entries, and retention may have deleted entries up to the
 * page's `pruned_until`) are passed over.
 */
import { backoffDelay, type BackoffOptions } from './backoff.js';
import { ClientError } from './errors.js';
import type { CommandKind, EventView, MessageView, ServerFrame } from './protocol.js';
import type { ClientStore } from './store.js';

export type StreamEntry =
  | {
    kind: 'message'; seq: number; message: MessageView;
    /**
     * The seq the view is as of: a sync page's `last_seq` (it shows the message as it was
     * then: in protocol 3 edited, deleted, with its reactions); absent for a live frame, which
     * is as of its own `seq`. The changes up to it are not applied to it again.
     */
    asOf?: number;
  }
  | { kind: 'event'; seq: number; event: EventView };

export type SyncFrame = Extract<ServerFrame, { type: 'sync' }>;

export interface StreamHost {
  request(command: CommandKind): Promise<ServerFrame>;
  /** Entries to apply, in seq order, each once. */
  apply(entries: StreamEntry[]): void;
  warn(message: string): void;
}

/** The largest page `sync` gives. */
const PAGE = 500;

export class SyncEngine {
  /** Every seq up to this one has been applied (or does not exist for this connection). */
  lastSeq = 0;
  /** Entries past a gap, waiting for it to be filled. */
  private readonly ahead = new Map<number, StreamEntry>();
  private syncing = false;
  private wanted = false;
  private failures = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private idleWaiters: (() => void)[] = [];
  private saving: Promise<void> = Promise.resolve();
  private saved = 0;
  readonly loaded: Promise<void>;

  constructor(private readonly store: ClientStore, private readonly host: StreamHost, private readonly backoff: BackoffOptions) {
    this.loaded = store.getLastSeq().then((seq) => { this.lastSeq = Math.max(this.lastSeq, seq); this.saved = seq; });
  }

  /** After `welcome`: sync when the user's stream is past what was applied. */
  welcome(lastSeq: number): void {
    if (lastSeq < this.lastSeq) {
      this.host.warn(`the server's last_seq ${lastSeq} is behind this client's ${this.lastSeq}: a store of another user, or a server that lost data`);
    }
    if (lastSeq > this.lastSeq || this.ahead.size) this.want();
    else this.notifyIdle();
  }

  hint(lastSeq: number): void {
    if (lastSeq > this.lastSeq) this.want();
  }

  disconnected(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }

  /** A live entry (or the ack of an own send). */
  offer(entry: StreamEntry): void {
    if (entry.seq <= this.lastSeq || this.ahead.has(entry.seq)) return;
    if (entry.seq === this.lastSeq + 1) {
      this.deliver([entry]);
      return;
    }
    this.ahead.set(entry.seq, entry);
    this.want();
  }

  /** Resolves when no sync is wanted or running (after the cycle in progress, if any). */
  idle(): Promise<void> {
    if (!this.syncing && !this.wanted) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Syncs now (for example after a long sleep), and resolves when it is done. */
  sync(): Promise<void> {
    this.want();
    return this.idle();
  }

  private want(): void {
    this.wanted = true;
    if (!this.syncing && this.retryTimer === undefined) void this.cycle();
  }

  private async cycle(): Promise<void> {
    this.syncing = true;
    try {
      while (this.wanted) {
        this.wanted = false;
        let after = this.lastSeq;
        for (;;) {
          const page = (await this.host.request({ type: 'sync', after_seq: after, limit: PAGE })) as SyncFrame;
          const next = this.page(page, after);
          // An empty page that claims more would ask for itself again.
          if (!page.has_more || next === after) break;
          after = next;
        }
      }
      this.failures = 0;
      this.syncing = false;
      this.notifyIdle();
    } catch (error) {
      this.syncing = false;
      this.wanted = true;
      // Gone with the connection: the next `welcome` syncs. Otherwise try again after a pause.
      if (error instanceof ClientError && (error.code === 'disconnected' || error.code === 'not_connected' || error.code === 'closed')) return;
      this.host.warn(`sync failed: ${String(error)}`);
      this.failures += 1;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        if (this.wanted) void this.cycle();
      }, backoffDelay(this.failures, this.backoff));
    }
  }

  /** Applies one page; returns where the next starts. */
  private page(page: SyncFrame, after: number): number {
    const entries: StreamEntry[] = [
      ...page.messages.map((message): StreamEntry => ({ kind: 'message', seq: message.seq, message, asOf: page.last_seq })),
      ...(page.events ?? []).map((event): StreamEntry => ({ kind: 'event', seq: event.seq, event })),
    ].sort((a, b) => a.seq - b.seq);
    const fresh = entries.filter((e) => e.seq > this.lastSeq);
    const end = Math.max(after, entries.length ? entries[entries.length - 1]!.seq : after);
    // The page is the whole of (after, end] for this connection; at its end, the whole of
    // (after, last_seq].
    const through = page.has_more ? end : Math.max(end, page.last_seq);
    this.deliver(fresh, through);
    return end;
  }

  private deliver(entries: StreamEntry[], through = 0): void {
    const out = [...entries];
    if (entries.length) this.lastSeq = Math.max(this.lastSeq, entries[entries.length - 1]!.seq);
    if (through > this.lastSeq) this.lastSeq = through;
    for (const seq of this.ahead.keys()) if (seq <= this.lastSeq) this.ahead.delete(seq);
    for (let next = this.ahead.get(this.lastSeq + 1); next; next = this.ahead.get(this.lastSeq + 1)) {
      this.ahead.delete(next.seq);
      out.push(next);
      this.lastSeq = next.seq;
    }
    if (out.length) this.host.apply(out);
    this.save();
  }

  private save(): void {
    const seq = this.lastSeq;
    if (seq === this.saved) return;
    this.saved = seq;
    this.saving = this.saving.then(() => this.store.setLastSeq(seq)).catch((error) => this.host.warn(`cannot keep last_seq: ${String(error)}`));
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
