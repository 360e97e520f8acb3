/**
 * The client of docs/PROTOCOL.md's "What a correct client does", built from the pieces of this
 * package: a {@link Connection} (states, reconnects, token refresh), the {@link Outbox} (sends
 * kept until acked, resent with the same `client_msg_id`), the {@link SyncEngine} (the stream
 * applied once, in seq order), the {@link ConversationStore}, {@link Presence} and
 * {@link Typing}. It routes each frame to the piece it concerns and offers the application one
 * handle.
 */
import { backoffDelay, DEFAULT_BACKOFF } from './backoff.js';
import { Connection, type ConnectionOptions, type ConnectionState, type Welcome } from './connection.js';
import { ConversationStore } from './conversations.js';
import { ClientError, ServerError } from './errors.js';
import { isConversationId, newClientMsgId, Outbox, type Ack } from './outbox.js';
import { Presence } from './presence.js';
import type { CommandKind, MessageView, QuoteView, ServerFrame } from './protocol.js';
import { MemoryStore, type ClientStore, type PendingSend } from './store.js';
import { SyncEngine, type StreamEntry } from './stream.js';
import { Typing, type TypingOptions } from './typing.js';

export interface ConnectOptions extends ConnectionOptions {
  /** Where the outbox and `last_seq` are kept (one store per user): a {@link MemoryStore} by default. */
  store?: ClientStore;
  typing?: Partial<TypingOptions>;
}

/** How {@link PeroxoClient.send} sends. */
export interface SendOptions {
  /** The idempotency key: a fresh one by default. */
  clientMsgId?: string;
  /**
   * Protocol 3: the id of the message this one replies to, of the same conversation (when
   * `to` names a user, it needs the user known: after the first `welcome`).
   */
  replyTo?: string;
}

/** The reply frame of a command type. */
export type Reply<T extends ServerFrame['type']> = Extract<ServerFrame, { type: T }>;

export interface ClientEvents {
  /** A stream entry, applied once, in seq order (messages, and the events of protocols 2 and 3). */
  entry: (entry: StreamEntry) => void;
  /** A send was committed (also a send restored from the store, which has no promise). */
  ack: (ack: Ack, send: PendingSend) => void;
  /** A send was refused for good. */
  sendFailed: (send: PendingSend, error: ServerError) => void;
  state: (state: ConnectionState) => void;
  /** Something the client handled itself, for logs. */
  warning: (message: string) => void;
}

/** The direct conversation id of two users: the sorted pair joined by `:`. */
export function directConversationId(a: string, b: string): string {
  return a < b ? `${a}:${b}` : `${b}:${a}`;
}

/** Pages back through a conversation's history, newest page first. */
export class HistoryPager {
  private before: string | null | undefined;
  /** No older messages are left. */
  done = false;

  constructor(private readonly client: PeroxoClient, readonly conversationId: string, private readonly limit: number) {}

  /** The next older page, oldest first within the page (empty once `done`). */
  async next(): Promise<MessageView[]> {
    if (this.done) return [];
    const page = this.before ? { before: this.before } : {};
    const command: CommandKind = this.client.protocol === 1
      ? { type: 'history', with: this.client.peerOf(this.conversationId), limit: this.limit, ...page }
      : { type: 'history', conversation_id: this.conversationId, limit: this.limit, ...page };
    const reply = await this.client.request<'history'>(command);
    this.before = reply.next_before;
    this.done = reply.next_before === null;
    this.client.conversations.history(reply.conversation_id, reply.messages, reply.last_seq ?? undefined);
    return reply.messages;
  }
}

export class PeroxoClient {
  /** The local conversation store, kept up to date from the stream. */
  readonly conversations = new ConversationStore();
  readonly presence: Presence;
  /** Resolves once the store's outbox and position are loaded and the first connection starts. */
  readonly ready: Promise<void>;
  private readonly connection: Connection;
  private readonly outbox: Outbox;
  private readonly stream: SyncEngine;
  private readonly typingState: Typing;
  private readonly listeners: { [K in keyof ClientEvents]: Set<ClientEvents[K]> } = {
    entry: new Set(), ack: new Set(), sendFailed: new Set(), state: new Set(), warning: new Set(),
  };
  private me: string | undefined;
  private welcomeProtocol: number;

  constructor(options: ConnectOptions) {
    const store = options.store ?? new MemoryStore();
    const backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.welcomeProtocol = options.protocol ?? 3;
    const warn = (message: string) => this.emit('warning', message);
    this.connection = new Connection({ ...options, onWarning: (m) => { options.onWarning?.(m); warn(m); } }, {
      welcome: (welcome) => this.welcome(welcome),
      frame: (frame) => this.frame(frame),
      down: () => this.down(),
    });
    this.connection.subscribe((state) => this.emit('state', state));
    const connected = () => this.connection.connected;
    const request = (command: CommandKind) => this.connection.request(command);
    const write = (command: CommandKind) => this.connection.write(command);
    this.outbox = new Outbox(store, {
      write, connected,
      acked: (send, ack) => this.acked(send, ack),
      failed: (send, error) => this.emit('sendFailed', send, error),
    }, backoff);
    this.stream = new SyncEngine(store, {
      request, warn,
      apply: (entries) => this.apply(entries),
    }, backoff);
    this.presence = new Presence({ request, write, connected, warn }, backoff);
    this.typingState = new Typing(write, (id, users) => this.conversations.setTyping(id, users),
      { sendEveryMs: 3_000, showForMs: 6_000, ...options.typing });
    this.ready = Promise.all([this.outbox.loaded, this.stream.loaded]).then(() => this.connection.start());
  }

  get state(): ConnectionState {
    return this.connection.state;
  }

  /** The user, from the last `welcome`. */
  get user(): string | undefined {
    return this.me;
  }

  /** The protocol version of the current (or last) connection. */
  get protocol(): number {
    return this.welcomeProtocol;
  }

  /** Every seq of the user's stream up to this one has been applied. */
  get lastSeq(): number {
    return this.stream.lastSeq;
  }

  on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  /** Resolves when connected (at once if it is). */
  whenConnected(): Promise<void> {
    if (this.connection.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const off = this.on('state', (state) => {
        if (state.status === 'connected') { off(); resolve(); }
        if (state.status === 'closed') { off(); reject(new ClientError('closed', state.message)); }
      });
    });
  }

  /**
   * Sends `text` to a user or a conversation (`alice:bob`, a group id), resolving with the ack
   * (also when it is a `duplicate`). The send is kept in the store until acked and resent with
   * the same `client_msg_id` after reconnects and retryable errors; it rejects with a
   * {@link ServerError} when refused for good (`bad_request`, `too_large`, `not_a_member`, …).
   */
  send(to: string, text: string, options: SendOptions = {}): Promise<Ack> {
    const { clientMsgId, replyTo } = options;
    if (replyTo && !isConversationId(to)) {
      // A reply is sent by conversation id: `to`'s is known once the user is.
      if (this.me === undefined) return Promise.reject(new ClientError('not_connected', 'a reply to a user needs its conversation id before the first welcome'));
      to = directConversationId(this.me, to);
    }
    return this.outbox.submit(to, text, clientMsgId, replyTo);
  }

  /**
   * Protocol 3: replaces the text of one of the user's messages (within the server's edit
   * window), resolving with the message as it is now. The edit carries one `client_msg_id`
   * for all its attempts, so it is retried after a lost connection or a retryable error
   * without being applied twice (a repeat answers `duplicate: true`). Refusals:
   * `not_author`, `edit_window_passed`, `message_deleted`, `unknown_message`, …
   */
  edit(conversationId: string, messageId: string, text: string, options: { clientMsgId?: string } = {}): Promise<Reply<'message_state'>> {
    const clientMsgId = options.clientMsgId ?? newClientMsgId();
    return this.changeMessage({ type: 'edit', conversation_id: conversationId, message_id: messageId, text, client_msg_id: clientMsgId });
  }

  /**
   * Protocol 3: deletes a message for everyone (the user's own, or any in a group the user
   * owns or administers), leaving a tombstone. Deleting a deleted message changes nothing,
   * so it is retried like {@link edit}.
   */
  delete(conversationId: string, messageId: string): Promise<Reply<'message_state'>> {
    return this.changeMessage({ type: 'delete', conversation_id: conversationId, message_id: messageId });
  }

  /** Protocol 3: adds the user's reaction `emoji` to a message (again: no change). */
  react(conversationId: string, messageId: string, emoji: string): Promise<Reply<'message_state'>> {
    return this.changeMessage({ type: 'react', conversation_id: conversationId, message_id: messageId, emoji });
  }

  /** Protocol 3: takes the user's reaction `emoji` back (one never made: no change). */
  unreact(conversationId: string, messageId: string, emoji: string): Promise<Reply<'message_state'>> {
    return this.changeMessage({ type: 'unreact', conversation_id: conversationId, message_id: messageId, emoji });
  }

  /** The sends not acked yet, oldest first. */
  pendingSends(): PendingSend[] {
    return this.outbox.pending();
  }

  /** Syncs the stream now and resolves when it has caught up. */
  sync(): Promise<void> {
    return this.stream.sync();
  }

  /** A pager over a conversation's history (by conversation id, or a user for a direct one). */
  history(conversationOrUser: string, options: { limit?: number } = {}): HistoryPager {
    const id = isConversationId(conversationOrUser) ? conversationOrUser : directConversationId(this.me ?? '', conversationOrUser);
    return new HistoryPager(this, id, options.limit ?? 50);
  }

  /** Loads a page of the conversation list (protocol 2) into {@link conversations}. */
  async loadConversations(options: { before?: string; limit?: number } = {}): Promise<Reply<'conversations'>> {
    const reply = await this.request<'conversations'>({ type: 'conversations', limit: options.limit ?? 50, ...(options.before ? { before: options.before } : {}) });
    this.conversations.summaries(reply.conversations, reply.last_seq ?? undefined);
    return reply;
  }

  /** Loads a group's members into {@link conversations}. */
  async loadMembers(conversationId: string): Promise<Reply<'members'>> {
    const reply = await this.request<'members'>({ type: 'members', conversation_id: conversationId });
    this.conversations.members(conversationId, reply.members);
    return reply;
  }

  /**
   * Tells a user or a conversation that the user is typing, at most once per
   * `typing.sendEveryMs`; false when throttled or disconnected.
   */
  typing(to: string): boolean {
    const command: CommandKind = isConversationId(to)
      ? (this.protocol === 1 ? { type: 'typing', to: this.peerOf(to) } : { type: 'typing', conversation_id: to })
      : { type: 'typing', to };
    return this.typingState.send(to, command);
  }

  /** Creates a group; retried with the same `client_msg_id` until it is answered. */
  async createGroup(title: string, members: string[] = [], clientMsgId = newClientMsgId()): Promise<Reply<'group_created'>> {
    return this.retrying(() => this.request<'group_created'>({ type: 'create_group', title, members, client_msg_id: clientMsgId }));
  }

  async markRead(conversationId: string, messageId: string): Promise<Reply<'read_state'>> {
    const reply = await this.request<'read_state'>({ type: 'mark_read', conversation_id: conversationId, message_id: messageId });
    this.conversations.readState(conversationId, reply.read_marker, reply.unread_count);
    return reply;
  }

  async markUnread(conversationId: string, messageId?: string): Promise<Reply<'read_state'>> {
    const reply = await this.request<'read_state'>({ type: 'mark_unread', conversation_id: conversationId, ...(messageId ? { message_id: messageId } : {}) });
    this.conversations.readState(conversationId, reply.read_marker, reply.unread_count);
    return reply;
  }

  /**
   * Any command, answered by its reply frame (typed by the reply's `type`): `rename_group`,
   * `add_members`, `read_receipts`, `online_users`, … Rejects with the server's error
   * ({@link ServerError}), or a {@link ClientError} when disconnected.
   */
  request<T extends ServerFrame['type'] = ServerFrame['type']>(command: CommandKind): Promise<Extract<ServerFrame, { type: T }>> {
    return this.connection.request(command);
  }

  reconnectNow(): void {
    this.connection.reconnectNow();
  }

  /** Closes for good. Unacked sends stay in the store for the next client of it. */
  close(): void {
    this.connection.close();
  }

  /** The other user of a direct conversation id. */
  peerOf(conversationId: string): string {
    const [a, b] = conversationId.split(':') as [string, string];
    return a === this.me ? b : a;
  }

  private emit<K extends keyof ClientEvents>(event: K, ...args: Parameters<ClientEvents[K]>): void {
    for (const listener of [...this.listeners[event]]) (listener as (...a: unknown[]) => void)(...args);
  }

  /** An idempotent change to a message, retried until answered; its answer goes into the store. */
  private async changeMessage(command: CommandKind): Promise<Reply<'message_state'>> {
    const reply = await this.retrying(() => this.request<'message_state'>(command));
    this.conversations.messageState(reply.message, reply.seq ?? undefined);
    return reply;
  }

  private async retrying<T>(attempt: () => Promise<T>): Promise<T> {
    for (let failures = 0; ; failures++) {
      try {
        await this.whenConnected();
        return await attempt();
      } catch (error) {
        const again = (error instanceof ServerError && error.retryable)
          || (error instanceof ClientError && error.code !== 'closed' && error.code !== 'frame_too_large');
        if (!again || failures >= 8) throw error;
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(failures)));
      }
    }
  }

  private welcome(welcome: Welcome): void {
    this.me = welcome.user;
    this.welcomeProtocol = welcome.protocol;
    this.conversations.me = welcome.user;
    this.outbox.writeAll();
    this.stream.welcome(welcome.last_seq);
    this.presence.welcome();
  }

  private down(): void {
    this.outbox.disconnected();
    this.stream.disconnected();
    this.presence.disconnected();
    this.typingState.clear();
  }

  private frame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'ack':
        this.outbox.ack(frame);
        return;
      case 'message': {
        const { type: _type, ...message } = frame;
        this.outbox.committed(message);
        this.typingState.stopped(message.conversation_id, message.from);
        this.stream.offer({ kind: 'message', seq: message.seq, message });
        return;
      }
      case 'event': {
        const { type: _type, ...event } = frame;
        this.stream.offer({ kind: 'event', seq: event.seq, event });
        return;
      }
      case 'sync_hint':
        this.stream.hint(frame.last_seq);
        return;
      case 'presence':
        this.presence.presence(frame.user, frame.status);
        return;
      case 'typing':
        this.typingState.received(frame.conversation_id ?? directConversationId(this.me ?? '', frame.from), frame.from);
        return;
      case 'receipt':
        this.conversations.receipt(frame.conversation_id, frame.user, frame.message_id);
        return;
      case 'error':
        if (!this.outbox.error(frame)) this.emit('warning', `error from the server: ${frame.code}: ${frame.message}`);
        return;
      default:
        return;
    }
  }

  /** A committed send becomes the user's own message in the stream. */
  private acked(send: PendingSend, ack: Ack): void {
    this.emit('ack', ack, send);
    const me = this.me ?? '';
    const to = ack.conversationId.startsWith('g~') ? ack.conversationId : isConversationId(send.to) ? this.peerOf(send.to) : send.to;
    let replyTo: QuoteView | undefined;
    if (send.replyTo) {
      replyTo = this.conversations.quoteOf(ack.conversationId, send.replyTo);
      // The quoted message is not known here: the stream's own copy (from sync) says it.
      if (!replyTo) {
        this.stream.hint(ack.seq);
        return;
      }
    }
    const message: MessageView = {
      message_id: ack.messageId, conversation_id: ack.conversationId, from: me, to, text: send.text,
      ts: ack.ts, seq: ack.seq, client_msg_id: ack.clientMsgId, ...(replyTo ? { reply_to: replyTo } : {}),
    };
    // A duplicate's text is the original's, which may differ from this attempt's: the stream's
    // own copy (from sync) is the truth, so only a fresh commit is applied from the ack.
    if (!ack.duplicate) this.stream.offer({ kind: 'message', seq: ack.seq, message });
  }

  private apply(entries: StreamEntry[]): void {
    this.conversations.apply(entries);
    for (const entry of entries) {
      if (entry.kind === 'message') this.outbox.committed(entry.message);
      this.emit('entry', entry);
    }
  }
}

/** Connects to a PerOXO gateway; the returned client reconnects until {@link PeroxoClient.close}. */
export function connect(options: ConnectOptions): PeroxoClient {
  return new PeroxoClient(options);
}
