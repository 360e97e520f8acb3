/**
 * What happens to a message after it is sent (protocol 3), as pure functions over message
 * views: an edit replaces its text, a delete leaves a tombstone without text or reactions,
 * reactions are counted per emoji (in the order they first came), and the quote of a reply
 * follows the message it quotes. The conversation store applies them to the messages it
 * keeps. Each returns a new view, or the same one when nothing changes, so that an
 * application can tell what changed by identity.
 */
import type { MessageView, ReactionView } from './protocol.js';

/** How many characters of the quoted message a reply's quote shows (as the server cuts it). */
export const QUOTE_EXCERPT_CHARS = 100;

/** The quote excerpt of `text`: its first {@link QUOTE_EXCERPT_CHARS} characters (code points). */
export function quoteExcerpt(text: string): string {
  const chars = Array.from(text);
  return chars.length <= QUOTE_EXCERPT_CHARS ? text : chars.slice(0, QUOTE_EXCERPT_CHARS).join('');
}

/** The message with its author's new text (a deleted message stays as it is). */
export function edited(message: MessageView, text: string, ts: number): MessageView {
  if (message.deleted || (message.text === text && message.edited_ts === ts)) return message;
  return { ...message, text, edited_ts: ts };
}

/** The tombstone of a message deleted for everyone by `by` at `ts`: no text, no reactions. */
export function tombstoned(message: MessageView, by: string, ts: number): MessageView {
  if (message.deleted) return message;
  const { reactions: _reactions, ...rest } = message;
  return { ...rest, text: '', deleted: { by, ts } };
}

/**
 * The message with one reaction `emoji` added (or taken back, when `added` is false). A
 * reaction of the user (`mine`) is counted once however often it is applied, since the user's
 * own view says whether it is there; others' are counted as they come.
 */
export function reacted(message: MessageView, emoji: string, mine: boolean, added: boolean): MessageView {
  if (message.deleted) return message;
  const reactions = message.reactions ?? [];
  const at = reactions.findIndex((r) => r.emoji === emoji);
  const current = at < 0 ? undefined : reactions[at]!;
  if (mine && (current?.mine ?? false) === added) return message;
  let next: ReactionView[];
  if (added) {
    next = current
      ? reactions.map((r, i) => (i === at ? { ...r, count: r.count + 1, mine: r.mine || mine } : r))
      : [...reactions, { emoji, count: 1, mine }];
  } else {
    if (!current) return message;
    next = current.count <= 1
      ? reactions.filter((_, i) => i !== at)
      : reactions.map((r, i) => (i === at ? { ...r, count: r.count - 1, mine: mine ? false : r.mine } : r));
  }
  const { reactions: _old, ...rest } = message;
  return next.length ? { ...rest, reactions: next } : rest;
}

/**
 * A reply's quote after the message it quotes (`quotedId`) changed: its new text, or `null`
 * once it is deleted. Messages that do not quote it are returned as they are.
 */
export function requoted(message: MessageView, quotedId: string, text: string | null): MessageView {
  const quote = message.reply_to;
  if (!quote || quote.message_id !== quotedId) return message;
  const next = text === null
    ? { ...quote, excerpt: '', deleted: true }
    : { ...quote, excerpt: quoteExcerpt(text) };
  if (next.excerpt === quote.excerpt && next.deleted === quote.deleted) return message;
  return { ...message, reply_to: next };
}
