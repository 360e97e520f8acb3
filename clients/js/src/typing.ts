/**
 * Typing indicators both ways: outgoing `typing` commands throttled to one per conversation per
 * interval (each takes a token of the command rate), and incoming ones shown for a while after
 * the last frame. Typing is live only: nothing is kept across reconnects.
 */
import type { CommandKind } from './protocol.js';

export interface TypingOptions {
  /** At most one `typing` per conversation this often (default 3 s). */
  sendEveryMs: number;
  /** A user shows as typing this long after their last `typing` (default 6 s). */
  showForMs: number;
}

export class Typing {
  private readonly lastSent = new Map<string, number>();
  /** conversation id → user → timer that ends the indicator. */
  private readonly shown = new Map<string, Map<string, ReturnType<typeof setTimeout>>>();

  constructor(
    private readonly write: (command: CommandKind) => boolean,
    private readonly changed: (conversationId: string, users: string[]) => void,
    private readonly options: TypingOptions,
  ) {}

  /** Tells `to` (a user or a conversation) that the user is typing; false when throttled or offline. */
  send(to: string, command: CommandKind): boolean {
    const now = Date.now();
    if (now - (this.lastSent.get(to) ?? -Infinity) < this.options.sendEveryMs) return false;
    if (!this.write(command)) return false;
    this.lastSent.set(to, now);
    return true;
  }

  /** Someone is typing in `conversationId`. */
  received(conversationId: string, user: string): void {
    let users = this.shown.get(conversationId);
    if (!users) this.shown.set(conversationId, (users = new Map()));
    clearTimeout(users.get(user));
    const known = users.has(user);
    users.set(user, setTimeout(() => this.stopped(conversationId, user), this.options.showForMs));
    if (!known) this.changed(conversationId, [...users.keys()]);
  }

  /** `user`'s message arrived: they stopped typing it. */
  stopped(conversationId: string, user: string): void {
    const users = this.shown.get(conversationId);
    if (!users?.has(user)) return;
    clearTimeout(users.get(user));
    users.delete(user);
    this.changed(conversationId, [...users.keys()]);
  }

  clear(): void {
    for (const [conversationId, users] of this.shown) {
      for (const timer of users.values()) clearTimeout(timer);
      this.changed(conversationId, []);
    }
    this.shown.clear();
    this.lastSent.clear();
  }
}
