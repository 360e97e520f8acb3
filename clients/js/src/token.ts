/** Reading a JWT's `exp` without verifying it: the client only needs to know when to refresh. */

/** The token's `exp` in milliseconds since the epoch, or `undefined` when it has none. */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), '=')));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * When to send `refresh`: `marginMs` before the expiry, or halfway there for a token that lives
 * less than twice the margin. Returns a delay from `now`.
 */
export function refreshDelay(expiresAt: number, now: number, marginMs: number): number {
  const remaining = expiresAt - now;
  if (remaining <= 0) return 0;
  return Math.max(0, remaining - Math.min(marginMs, remaining / 2));
}
