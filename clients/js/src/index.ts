/**
 * `@peroxo/client`: the TypeScript client of PerOXO's WebSocket protocol.
 *
 * `connect()` gives a {@link PeroxoClient} that reconnects with backoff chosen by close code,
 * refreshes its token, keeps unacked sends in a store and resends them with the same
 * `client_msg_id`, and applies the user's stream once, in seq order, to a local conversation
 * store. The frame types in `protocol.ts` are generated from docs/protocol.schema.json, which
 * the server's own types produce.
 */
export { connect, directConversationId, HistoryPager, PeroxoClient } from './client.js';
export type { ClientEvents, ConnectOptions, Reply, SendOptions } from './client.js';
export type { ClosedReason, ConnectionOptions, ConnectionState, FetchLike, WebSocketConstructor, WebSocketLike, Welcome } from './connection.js';
export { compareIds, ConversationStore } from './conversations.js';
export type { Conversation, ConversationSnapshot } from './conversations.js';
export { ClientError, ServerError } from './errors.js';
export type { ClientErrorCode } from './errors.js';
export { IndexedDbStore } from './indexeddb.js';
export { QUOTE_EXCERPT_CHARS, quoteExcerpt } from './lifecycle.js';
export { backoffDelay, nextStepAfterClose, nextStepAfterRefusal } from './backoff.js';
export type { BackoffOptions, NextStep } from './backoff.js';
export { newClientMsgId } from './outbox.js';
export type { Ack } from './outbox.js';
export type { Presence } from './presence.js';
export { MemoryStore } from './store.js';
export type { ClientStore, PendingSend } from './store.js';
export type { StreamEntry } from './stream.js';
export type { TypingOptions } from './typing.js';
export type * from './protocol.js';
