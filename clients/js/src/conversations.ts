/**
 * The local conversation store: what the user's stream says about each conversation (its
 * messages, title, members, role, read marker, unread count, the peer's read marker, live
 * receipts and who is typing), kept up to date by applying stream entries in seq order and
 * merging the pages of `conversations` and `history`. Subscribers hear which conversations
 * changed.
 *
 * In protocol 3 the stream also changes messages already known (edits, deletes, reactions;
 * see `lifecycle.ts`): the message is replaced by a new view, in `messages` and as
 * `lastMessage`, and so are the quotes of replies to it. A change to a message the store does
 * not hold changes only what the conversation says of it (unread count, preview); the message
 * comes with its current state when a page brings it.
 *
 * Every view of a message is as of a seq of the user's stream (docs/PROTOCOL.md, "Keeping
 * messages current"): a live `message` frame as of its own seq, a `sync` page and (protocol 3)
 * a `history` or `conversations` page as of the page's `last_seq`, a `message_state` answer as
 * of its `seq`. The store keeps that seq with each copy: an event changes a copy only when its
 * seq is above it (and the copy is then as of the event's seq), and a newer view replaces an
 * older copy, so that pages, answers and live entries may come in any order without a
 * reaction being counted twice or a change lost. A conversation read from the list is as of
 * the list's `last_seq` in the same way: its unread count, read marker, title, role and member
 * count already show the entries up to it, which change them no more.
 */
import { edited, quoteExcerpt, reacted, requoted, tombstoned } from './lifecycle.js';
import type { ConversationView, EventView, MemberView, MessageView, QuoteView } from './protocol.js';
import type { StreamEntry } from './stream.js';

export interface Conversation {
  id: string;
  kind: 'direct' | 'group';
  /** Direct: the other user (oneself in a conversation with oneself). */
  peer: string | undefined;
  /** Group: its title, once known. */
  title: string | undefined;
  /** Group: the user's role, once known. */
  role: string | undefined;
  memberCount: number | undefined;
  /** Group members (user → role), once `members` was asked or the group was created here. */
  members: Map<string, string> | undefined;
  /**
   * Known messages, oldest first (live, synced and paged in with `history`). Protocol 3: a
   * changed message is a new object (`text` and `edited_ts` after an edit; `deleted` and no
   * text after a delete; `reactions`), as are replies whose quote changed with it.
   */
  messages: MessageView[];
  /** The preview: the newest message that is not deleted (a tombstone when none is known). */
  lastMessage: MessageView | undefined;
  unreadCount: number;
  /** The newest message read by the user (`"0"` for none). */
  readMarker: string;
  /** Direct: how far the peer has read (read ticks). */
  peerReadMarker: string | undefined;
  /** Group: live read receipts (user → message id), not durable. */
  receipts: Map<string, string>;
  /** Users typing now. */
  typing: string[];
  /** The user's seq of the newest entry that ordered the list. */
  activitySeq: number;
}

/**
 * The conversation list as plain JSON, for an application to keep (`localStorage`, a file) and
 * give back to {@link ConversationStore.restore} before connecting, so that a reload shows the
 * list while the server cannot be reached. Messages are left out but the newest of each
 * conversation; members and live state (receipts, typing) are read again.
 */
export interface ConversationSnapshot {
  version: 1;
  conversations: Array<Pick<Conversation, 'id' | 'kind' | 'peer' | 'title' | 'role' | 'memberCount' | 'lastMessage'
    | 'unreadCount' | 'readMarker' | 'peerReadMarker' | 'activitySeq'>>;
}

/** Compares message ids (strings of digits) as numbers. */
export function compareIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** The two users of a direct conversation id. */
function participants(id: string): [string, string] {
  const at = id.indexOf(':');
  return [id.slice(0, at), id.slice(at + 1)];
}

export class ConversationStore {
  private readonly conversations = new Map<string, Conversation>();
  private readonly listeners = new Set<(changed: string[]) => void>();
  private changed = new Set<string>();
  /** Conversation and message id → the seq its copy is as of, when above the message's own seq. */
  private readonly asOf = new Map<string, number>();
  /** Conversation and message id of a reply → the seq its quote is as of, when above its copy's. */
  private readonly quoteAsOf = new Map<string, number>();
  /** Conversation id → the `last_seq` of the list page its summary came from (protocol 3). */
  private readonly listedAsOf = new Map<string, number>();
  /**
   * Conversation and message id of messages the unread count does not count because they
   * were deleted: their view was a tombstone when the stream brought them, or their delete
   * was applied. A delete event for one of them lowers nothing.
   */
  private readonly uncounted = new Set<string>();
  me = '';

  /** Every conversation, the most recent activity first. */
  list(): Conversation[] {
    return [...this.conversations.values()].sort((a, b) => b.activitySeq - a.activitySeq);
  }

  get(id: string): Conversation | undefined {
    return this.conversations.get(id);
  }

  /** The sum of the unread counts. */
  totalUnread(): number {
    let total = 0;
    for (const c of this.conversations.values()) total += c.unreadCount;
    return total;
  }

  subscribe(listener: (changed: string[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Tells subscribers what changed since the last call. */
  flush(): void {
    if (!this.changed.size) return;
    const changed = [...this.changed];
    this.changed = new Set();
    for (const listener of [...this.listeners]) listener(changed);
  }

  private conversation(id: string): Conversation {
    let c = this.conversations.get(id);
    if (!c) {
      const group = id.startsWith('g~');
      let peer: string | undefined;
      if (!group) {
        const [a, b] = participants(id);
        peer = a === this.me ? b : a;
      }
      c = {
        id, kind: group ? 'group' : 'direct', peer, title: undefined, role: undefined,
        memberCount: group ? undefined : peer === this.me ? 1 : 2, members: undefined, messages: [],
        lastMessage: undefined, unreadCount: 0, readMarker: '0', peerReadMarker: group ? undefined : '0',
        receipts: new Map(), typing: [], activitySeq: 0,
      };
      this.conversations.set(id, c);
    }
    this.changed.add(id);
    return c;
  }

  /** Adds a conversation the stream has not named yet (a direct one started by the user). */
  add(id: string): Conversation {
    const c = this.conversation(id);
    this.flush();
    return c;
  }

  /** The list, to keep across reloads (see {@link ConversationSnapshot}). */
  snapshot(): ConversationSnapshot {
    return {
      version: 1,
      conversations: this.list().map((c) => ({
        id: c.id, kind: c.kind, peer: c.peer, title: c.title, role: c.role, memberCount: c.memberCount,
        lastMessage: c.lastMessage, unreadCount: c.unreadCount, readMarker: c.readMarker,
        peerReadMarker: c.peerReadMarker, activitySeq: c.activitySeq,
      })),
    };
  }

  /**
   * Merges a {@link ConversationStore.snapshot} kept earlier, before the stream is applied: what the stream and
   * the server's pages say later wins. Anything malformed is left out.
   */
  restore(snapshot: unknown): void {
    const saved = (snapshot as Partial<ConversationSnapshot> | null)?.conversations;
    if ((snapshot as ConversationSnapshot | null)?.version !== 1 || !Array.isArray(saved)) return;
    for (const v of saved) {
      if (typeof v?.id !== 'string' || !/^(g~|[^:]+:[^:]+$)/.test(v.id) || this.conversations.has(v.id)) continue;
      const c = this.conversation(v.id);
      const text = (x: unknown) => (typeof x === 'string' ? x : undefined);
      const count = (x: unknown) => (Number.isSafeInteger(x) && (x as number) >= 0 ? (x as number) : undefined);
      c.title = text(v.title);
      c.role = text(v.role);
      c.memberCount = count(v.memberCount) ?? c.memberCount;
      c.unreadCount = count(v.unreadCount) ?? 0;
      c.readMarker = text(v.readMarker) ?? '0';
      if (c.kind === 'direct') c.peerReadMarker = text(v.peerReadMarker) ?? '0';
      c.activitySeq = count(v.activitySeq) ?? 0;
      const m = v.lastMessage;
      if (m && typeof m.message_id === 'string' && typeof m.text === 'string' && m.conversation_id === v.id) {
        c.lastMessage = m;
        c.messages = [m];
      }
    }
    this.flush();
  }

  /** Applies stream entries, in seq order. */
  apply(entries: StreamEntry[]): void {
    for (const entry of entries) {
      if (entry.kind === 'message') this.message(entry.message, entry.asOf);
      else this.event(entry.event);
    }
    this.flush();
  }

  private message(view: MessageView, asOf?: number): void {
    const c = this.conversation(view.conversation_id);
    this.addMessages(c, [view], asOf);
    // An entry the list already counted (its summary was read after it) changes no count.
    if (view.seq <= c.activitySeq) return;
    c.activitySeq = view.seq;
    // The copy kept: this view, or a newer one a page brought first.
    const m = this.find(c, view.message_id) ?? view;
    if (m.deleted) this.uncounted.add(key(c.id, m.message_id));
    // A message synced after it was deleted is neither unread nor a preview (unless nothing is).
    if (m.deleted) c.lastMessage ??= m;
    else if (!c.lastMessage || c.lastMessage.deleted || compareIds(m.message_id, c.lastMessage.message_id) > 0) c.lastMessage = m;
    if (m.from === this.me) {
      // Sending marks the conversation read up to the message.
      if (compareIds(m.message_id, c.readMarker) > 0) c.readMarker = m.message_id;
      c.unreadCount = 0;
    } else if (!m.deleted && compareIds(m.message_id, c.readMarker) > 0) {
      c.unreadCount += 1;
    }
  }

  private event(e: EventView): void {
    const c = this.conversation(e.conversation_id);
    // What happens to a message (protocol 3) does not reorder the list either.
    const membership = !['read_marker', 'read_receipt', 'message_edited', 'message_deleted', 'reaction_added', 'reaction_removed'].includes(e.event);
    if (membership && e.seq > c.activitySeq) c.activitySeq = e.seq;
    // The list page the summary came from already shows this entry.
    const listed = e.seq <= (this.listedAsOf.get(c.id) ?? 0);
    switch (e.event) {
      case 'group_created':
        if (!listed) {
          c.title = e.title ?? c.title;
          c.memberCount = e.member_count ?? c.memberCount;
          if (e.actor === this.me) c.role = 'owner';
        }
        c.role ??= e.actor === this.me ? 'owner' : 'member';
        break;
      case 'members_added':
        for (const user of e.users ?? []) {
          if (!c.members?.has(user)) {
            c.members?.set(user, 'member');
            if (c.memberCount !== undefined && !listed) c.memberCount += 1;
          }
          if (user === this.me) c.role ??= 'member';
        }
        break;
      case 'member_left':
        if (e.user === this.me) {
          // A removed or departed member's list no longer shows the group.
          this.conversations.delete(c.id);
          break;
        }
        if (e.user !== undefined && e.user !== null && (!c.members || c.members.delete(e.user)) && c.memberCount && !listed) c.memberCount -= 1;
        break;
      case 'role_changed':
        if (e.user && e.role) {
          c.members?.set(e.user, e.role);
          if (e.user === this.me && !listed) c.role = e.role;
        }
        break;
      case 'group_renamed':
        if (!listed) c.title = e.title ?? c.title;
        break;
      case 'read_marker':
        if (listed) break;
        if (e.message_id) c.readMarker = e.message_id;
        if (e.unread_count !== undefined && e.unread_count !== null) c.unreadCount = e.unread_count;
        break;
      case 'read_receipt':
        if (e.message_id && (!c.peerReadMarker || compareIds(e.message_id, c.peerReadMarker) > 0)) c.peerReadMarker = e.message_id;
        break;
      case 'message_edited':
        if (e.message_id) this.edit(c, e.message_id, e.text ?? '', e.ts, e.seq);
        break;
      case 'message_deleted':
        if (e.message_id) this.tombstone(c, e.message_id, e.actor, e.ts, e.moderated === true, e.seq, listed);
        break;
      case 'reaction_added':
      case 'reaction_removed':
        if (e.message_id && e.emoji && this.changes(c, e.message_id, e.seq)) {
          const added = e.event === 'reaction_added';
          this.update(c, e.message_id, (m) => reacted(m, e.emoji!, e.actor === this.me, added));
        }
        break;
    }
  }

  /**
   * A message as the server answered a change to it (`message_state`), as of `seq`, the seq
   * the change's event took: it replaces an older copy (and is added when the message is not
   * known here), and the event, when it comes, changes it no more. Without `seq` the command
   * changed nothing, and the copy stays as it is.
   */
  messageState(view: MessageView, seq?: number): void {
    if (seq === undefined) return;
    this.addMessages(this.conversation(view.conversation_id), [view], seq);
    this.flush();
  }

  /** The quote a reply to message `messageId` shows, from the message as known here. */
  quoteOf(conversationId: string, messageId: string): QuoteView | undefined {
    const c = this.conversations.get(conversationId);
    const m = c && this.find(c, messageId);
    if (!m) return undefined;
    return m.deleted
      ? { message_id: m.message_id, from: m.from, excerpt: '', deleted: true }
      : { message_id: m.message_id, from: m.from, excerpt: quoteExcerpt(m.text) };
  }

  /** The seq the copy `m` is as of. */
  private copyAsOf(c: Conversation, m: MessageView): number {
    return Math.max(m.seq, this.asOf.get(key(c.id, m.message_id)) ?? 0);
  }

  /**
   * Whether the event of seq `seq` changes the copy of message `id`: there is one, and it is
   * as of an earlier seq. If so, the copy counts as of `seq` from now on.
   */
  private changes(c: Conversation, id: string, seq: number): boolean {
    const copy = this.find(c, id);
    if (!copy || seq <= this.copyAsOf(c, copy)) return false;
    this.asOf.set(key(c.id, id), seq);
    return true;
  }

  /** A known message by id (also the preview, which may not be among `messages`). */
  private find(c: Conversation, id: string): MessageView | undefined {
    return c.messages.find((m) => m.message_id === id) ?? (c.lastMessage?.message_id === id ? c.lastMessage : undefined);
  }

  /** Replaces a message by `change(message)`, in `messages` and as the preview. */
  private update(c: Conversation, id: string, change: (m: MessageView) => MessageView): void {
    let changed = false;
    const replace = (m: MessageView) => {
      if (m.message_id !== id) return m;
      const next = change(m);
      changed ||= next !== m;
      return next;
    };
    c.messages = c.messages.map(replace);
    if (c.lastMessage) c.lastMessage = replace(c.lastMessage);
    if (changed) this.changed.add(c.id);
  }

  /**
   * The quotes of every reply to message `id` follow its text as of `seq` (`null`: deleted),
   * in the replies whose quotes are as of an earlier seq.
   */
  private requote(c: Conversation, id: string, text: string | null, seq: number): void {
    const done = new Map<string, MessageView>();
    const replace = (m: MessageView) => {
      if (m.reply_to?.message_id !== id) return m;
      const again = done.get(m.message_id);
      if (again) return again;
      const reply = key(c.id, m.message_id);
      if (seq <= Math.max(this.copyAsOf(c, m), this.quoteAsOf.get(reply) ?? 0)) return m;
      this.quoteAsOf.set(reply, seq);
      const next = requoted(m, id, text);
      done.set(m.message_id, next);
      if (next !== m) this.changed.add(c.id);
      return next;
    };
    c.messages = c.messages.map(replace);
    if (c.lastMessage) c.lastMessage = replace(c.lastMessage);
  }

  /** A reply's quote, from a view as of `at`, follows a newer copy of what it quotes. */
  private quoteFromCopy(c: Conversation, reply: MessageView, at: number): void {
    this.quoteAsOf.delete(key(c.id, reply.message_id));
    const quoted = reply.reply_to && this.find(c, reply.reply_to.message_id);
    if (!quoted) return;
    const seq = this.copyAsOf(c, quoted);
    if (seq > at) this.requote(c, quoted.message_id, quoted.deleted ? null : quoted.text, seq);
  }

  /** The edit of stream entry `seq`. */
  private edit(c: Conversation, id: string, text: string, ts: number, seq: number): void {
    if (this.find(c, id)?.deleted) return;
    if (this.changes(c, id, seq)) this.update(c, id, (m) => edited(m, text, ts));
    this.requote(c, id, text, seq);
  }

  /**
   * A message deleted for everyone (stream entry `seq`): a tombstone; it no longer counts as
   * unread (when it was, for this user, and the count is not from a list that already shows
   * the delete: `listed`), and a preview of it falls back to the newest known message before
   * it that is not deleted, as the server's list does.
   */
  private tombstone(c: Conversation, id: string, by: string, ts: number, moderated: boolean, seq: number, listed: boolean): void {
    const before = this.find(c, id);
    const counted = key(c.id, id);
    if (!listed && !this.uncounted.has(counted)) {
      // Unknown here: its author is the actor, unless a moderator deleted it.
      const sender = before?.from ?? (moderated ? undefined : by);
      if (sender !== this.me && compareIds(c.readMarker, id) < 0 && c.unreadCount > 0) {
        c.unreadCount -= 1;
        this.changed.add(c.id);
      }
    }
    this.uncounted.add(counted);
    if (this.changes(c, id, seq)) this.update(c, id, (m) => tombstoned(m, by, ts));
    this.requote(c, id, null, seq);
    this.previewBack(c, id);
  }

  /** A preview of message `id`, deleted, falls back to the newest known message before it that is not. */
  private previewBack(c: Conversation, id: string): void {
    if (c.lastMessage?.message_id !== id || !c.lastMessage.deleted) return;
    const previous = c.messages.filter((m) => !m.deleted && compareIds(m.message_id, id) < 0).pop();
    if (previous) c.lastMessage = previous;
    this.changed.add(c.id);
  }

  /**
   * Merges a page of the conversation list; `lastSeq`: the page's `last_seq` (protocol 3), the
   * seq everything in it is as of (see {@link ConversationStore}).
   */
  summaries(views: ConversationView[], lastSeq?: number): void {
    for (const v of views) {
      const c = this.conversation(v.conversation_id);
      if (lastSeq !== undefined) this.listedAsOf.set(c.id, lastSeq);
      c.kind = v.kind;
      c.peer = v.peer ?? c.peer;
      c.title = v.title ?? c.title;
      c.role = v.role ?? c.role;
      c.memberCount = v.member_count;
      c.unreadCount = v.unread_count;
      c.readMarker = v.read_marker;
      c.peerReadMarker = v.peer_read_marker ?? c.peerReadMarker;
      c.activitySeq = Math.max(c.activitySeq, v.activity_seq);
      if (v.last_message) {
        this.addMessages(c, [v.last_message], lastSeq);
        const preview = this.find(c, v.last_message.message_id)!;
        // The server's preview after a delete may be older than the tombstone shown here.
        if (!c.lastMessage || c.lastMessage.deleted || compareIds(v.last_message.message_id, c.lastMessage.message_id) >= 0) {
          c.lastMessage = preview;
          this.previewBack(c, preview.message_id);
        }
      }
    }
    this.flush();
  }

  /**
   * Merges a page of history (or any messages known to be committed); `lastSeq`: the page's
   * `last_seq` (protocol 3), the seq its views are as of (each message's own seq without it).
   */
  history(conversationId: string, messages: MessageView[], lastSeq?: number): void {
    this.addMessages(this.conversation(conversationId), messages, lastSeq);
    this.flush();
  }

  members(conversationId: string, members: MemberView[]): void {
    const c = this.conversation(conversationId);
    c.members = new Map(members.map((m) => [m.user, m.role]));
    c.memberCount = members.length;
    c.role = c.members.get(this.me) ?? c.role;
    this.flush();
  }

  receipt(conversationId: string, user: string, messageId: string): void {
    this.conversation(conversationId).receipts.set(user, messageId);
    this.flush();
  }

  setTyping(conversationId: string, users: string[]): void {
    this.conversation(conversationId).typing = users;
    this.flush();
  }

  /** The local read state after `mark_read`/`mark_unread` answered. */
  readState(conversationId: string, readMarker: string, unreadCount: number): void {
    const c = this.conversation(conversationId);
    c.readMarker = readMarker;
    c.unreadCount = unreadCount;
    this.flush();
  }

  /**
   * Merges views of messages as of `asOf` (each as of its own seq, at least): a message not
   * known here is added; a known one is replaced when its copy is as of an earlier seq, and the
   * quotes of replies to it follow.
   */
  private addMessages(c: Conversation, views: MessageView[], asOf = 0): void {
    const fresh: MessageView[] = [];
    for (const view of views) {
      const id = view.message_id;
      const at = Math.max(asOf, view.seq);
      const copy = this.find(c, id);
      if (!copy || at > this.copyAsOf(c, copy)) {
        if (at > view.seq) this.asOf.set(key(c.id, id), at);
        else this.asOf.delete(key(c.id, id));
        if (copy) {
          this.update(c, id, () => view);
          this.requote(c, id, view.deleted ? null : view.text, at);
          this.previewBack(c, id);
        }
      }
      if (!c.messages.some((m) => m.message_id === id)) fresh.push(this.find(c, id) ?? view);
    }
    if (fresh.length) {
      c.messages = [...c.messages, ...fresh].sort((a, b) => compareIds(a.message_id, b.message_id));
      this.changed.add(c.id);
    }
    for (const view of views) {
      if (view.reply_to && this.find(c, view.message_id) === view) this.quoteFromCopy(c, view, Math.max(asOf, view.seq));
    }
  }
}

/** The key of a message in the store's maps. */
function key(conversationId: string, messageId: string): string {
  return `${conversationId} ${messageId}`;
}
