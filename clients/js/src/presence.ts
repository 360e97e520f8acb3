/**
 * Presence watches: the users (and groups) the application watches, their status as the server
 * last reported it, and the watch list subscribed again after every reconnect (a new connection
 * starts with an empty one). Presence is not durable: a snapshot after reconnecting is the
 * truth, and statuses are unknown while disconnected.
 */
import { backoffDelay, type BackoffOptions } from './backoff.js';
import { ClientError, ServerError } from './errors.js';
import type { CommandKind, PresenceStatus, ServerFrame } from './protocol.js';

type Snapshot = Extract<ServerFrame, { type: 'presence_snapshot' }>;

/** The most users one `presence_subscribe` may name (`limits.max_watched_users` by default). */
const CHUNK = 1000;

export interface PresenceHost {
  request(command: CommandKind): Promise<ServerFrame>;
  write(command: CommandKind): boolean;
  connected(): boolean;
  warn(message: string): void;
}

export class Presence {
  private readonly users = new Set<string>();
  private readonly groups = new Set<string>();
  private readonly status = new Map<string, PresenceStatus>();
  private readonly listeners = new Set<(user: string, status: PresenceStatus | undefined) => void>();
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private failures = 0;

  constructor(private readonly host: PresenceHost, private readonly backoff: BackoffOptions) {}

  /** The user's status, `undefined` when unknown (not watched, or disconnected). */
  get(user: string): PresenceStatus | undefined {
    return this.status.get(user);
  }

  subscribe(listener: (user: string, status: PresenceStatus | undefined) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Watches users (kept across reconnects); resolves once the snapshot is in, when connected. */
  async watch(users: string[]): Promise<void> {
    const fresh = users.filter((u) => !this.users.has(u));
    for (const u of fresh) this.users.add(u);
    if (fresh.length && this.host.connected()) await this.subscribeUsers(fresh);
  }

  /** Watches a group's members (protocol 2), across reconnects. */
  async watchGroup(conversationId: string): Promise<void> {
    this.groups.add(conversationId);
    if (this.host.connected()) await this.apply(this.host.request({ type: 'presence_subscribe', conversation_id: conversationId }));
  }

  unwatch(users: string[]): void {
    const gone = users.filter((u) => this.users.delete(u));
    for (const u of gone) this.set(u, undefined);
    for (let i = 0; i < gone.length; i += CHUNK) this.host.write({ type: 'presence_unsubscribe', users: gone.slice(i, i + CHUNK) });
  }

  /** After `welcome`: the new connection watches nobody yet. */
  welcome(): void {
    void this.restore();
  }

  disconnected(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    for (const user of [...this.status.keys()]) this.set(user, undefined);
  }

  presence(user: string, status: PresenceStatus): void {
    if (this.users.has(user) || this.groups.size) this.set(user, status);
  }

  private async restore(): Promise<void> {
    try {
      if (this.users.size) await this.subscribeUsers([...this.users]);
      for (const group of this.groups) await this.apply(this.host.request({ type: 'presence_subscribe', conversation_id: group }));
      this.failures = 0;
    } catch (error) {
      if (error instanceof ClientError && error.code !== 'timeout') return; // the next welcome restores
      if (error instanceof ServerError && !error.retryable) {
        this.host.warn(`presence_subscribe refused: ${error.message}`);
        return;
      }
      this.failures += 1;
      this.retryTimer = setTimeout(() => void this.restore(), backoffDelay(this.failures, this.backoff));
    }
  }

  private async subscribeUsers(users: string[]): Promise<void> {
    for (let i = 0; i < users.length; i += CHUNK) {
      await this.apply(this.host.request({ type: 'presence_subscribe', users: users.slice(i, i + CHUNK) }));
    }
  }

  private async apply(reply: Promise<ServerFrame>): Promise<void> {
    const snapshot = (await reply) as Snapshot;
    for (const [user, status] of Object.entries(snapshot.users)) this.set(user, status);
  }

  private set(user: string, status: PresenceStatus | undefined): void {
    if (this.status.get(user) === status) return;
    if (status === undefined) this.status.delete(user);
    else this.status.set(user, status);
    for (const listener of [...this.listeners]) listener(user, status);
  }
}
