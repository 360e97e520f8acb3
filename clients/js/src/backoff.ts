/**
 * What to do after a connection ends, chosen by how it ended (docs/PROTOCOL.md, "What a correct
 * client does", item 6), and the exponential backoff with jitter before the next attempt. The
 * same decisions as `peroxo-client`'s `reconnect` module:
 *
 * - close codes 1000, 1001, 1009, 1011, 1013, a dropped connection (1006) and any other code:
 *   reconnect with backoff;
 * - 4001 (token expired): reconnect only with a fresh token from `getToken`;
 * - 1008 (the client kept exceeding its command rate): stop; the application decides when to
 *   start again;
 * - a refused upgrade, when its status is known: 401 needs a fresh token, 429 and 5xx are
 *   retried with backoff, anything else (400, 403, 404, …) stops.
 */

/** What the client does after a connection ends. */
export type NextStep = 'reconnect' | 'fresh_token' | 'stop';

export function nextStepAfterClose(code: number): NextStep {
  if (code === 1008) return 'stop';
  if (code === 4001) return 'fresh_token';
  return 'reconnect';
}

export function nextStepAfterRefusal(status: number): NextStep {
  if (status === 401) return 'fresh_token';
  if (status === 429 || (status >= 500 && status <= 599)) return 'reconnect';
  return 'stop';
}

export interface BackoffOptions {
  /** The first delay, before jitter (default 500 ms). */
  initialMs: number;
  /** Delays double up to this (default 30 s). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000 };

/**
 * The pause before the next attempt after `failures` consecutive failures (0 after a connection
 * that worked and then ended): `initialMs · 2^failures`, capped at `maxMs`, drawn evenly from
 * half to one and a half times that, so that clients dropped together do not return together.
 */
export function backoffDelay(failures: number, options: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const base = Math.min(options.maxMs, options.initialMs * 2 ** Math.min(failures, 20));
  return Math.round(base / 2 + random() * base);
}
