// A fake WebSocket class and the server side of it, for unit tests: the test plays the
// server, frame by frame.

import { connect } from '../../dist/index.js';
import { waitFor } from '../wait.mjs';

export { waitFor };

export class FakeServer {
  constructor() {
    this.sockets = [];
    const server = this;
    this.WebSocket = class FakeSocket {
      constructor(url) {
        this.url = new URL(url);
        this.readyState = 0;
        this.sent = [];
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        server.sockets.push(this);
      }
      send(data) {
        if (this.readyState !== 1) throw new Error('not open');
        this.sent.push(JSON.parse(data));
      }
      close(code = 1000, reason = '') {
        if (this.readyState === 3) return;
        this.readyState = 3;
        this.closedByClient = { code, reason };
      }
      // The server's side.
      accept(user = 'alice', lastSeq = 0, protocol = 2) {
        this.readyState = 1;
        this.onopen?.({});
        this.frame({ type: 'welcome', session_id: `s${server.sockets.length}`, user, tenant: 'default', last_seq: lastSeq, protocol });
      }
      frame(frame) {
        this.onmessage?.({ data: JSON.stringify(frame) });
      }
      /** Closes from the server's side. */
      hangUp(code, reason = '') {
        this.readyState = 3;
        this.onclose?.({ code, reason });
      }
      /** A refused upgrade as `ws` reports it, then the close. */
      refuse(status) {
        this.onerror?.({ message: `Unexpected server response: ${status}` });
        this.hangUp(1006);
      }
      /** Frames of `type` the client wrote. */
      written(type) {
        return this.sent.filter((f) => f.type === type);
      }
    };
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }

  /** Waits for socket number `n` (1-based) to be opened by the client. */
  async socket(n) {
    await waitFor(() => this.sockets.length >= n, `socket ${n}`);
    return this.sockets[n - 1];
  }
}

/** An unsigned JWT-shaped token with `exp` (seconds) and a marker to tell tokens apart. */
export function token(expSeconds, n = 0) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64({ sub: 'alice', exp: expSeconds, n })}.sig`;
}

export const FAST = { backoff: { initialMs: 5, maxMs: 20 } };

/**
 * A client of `server` as alice on a dev node, with short backoffs; it asks no `/ws/check`
 * unless the test gives it a `fetch`.
 */
export function fakeClient(server, options = {}) {
  return connect({ url: 'ws://peroxo.test/ws?user=alice', WebSocket: server.WebSocket, fetch: null, ...FAST, ...options });
}
