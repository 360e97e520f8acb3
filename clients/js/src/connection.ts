/**
 * One logical connection to a gateway across many WebSockets: opening them, the connection
 * state the application sees, reconnecting with backoff chosen by how each socket ended,
 * refreshing the token before it expires, keeping a silent socket alive (and dropping a dead
 * one), pacing writes under the server's command rate, and matching replies to requests by
 * `req_id`. It knows nothing of sends or the stream: the client builds those on top.
 */
import { backoffDelay, DEFAULT_BACKOFF, nextStepAfterClose, nextStepAfterRefusal, type BackoffOptions, type NextStep } from './backoff.js';
import { ClientError, ServerError } from './errors.js';
import { frameTooLarge, MAX_FRAME_BYTES } from './limits.js';
import type { CommandKind, ServerFrame } from './protocol.js';
import { refreshDelay, tokenExpiry } from './token.js';

/** The part of the WebSocket API the client uses: browsers', Node ≥ 22's, or `ws`'s. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The part of `fetch` the client uses, to ask `/ws/check` why an upgrade failed. */
export type FetchLike = (url: string, init?: { cache?: 'no-store' }) => Promise<{ status: number }>;

/** Why the client stopped for good. */
export type ClosedReason =
  /** The application called `close()`. */
  | 'client'
  /** Close 1008: the client exceeded its command rate persistently. */
  | 'rate_abuse'
  /** The token expired (4001, or an expired token before connecting) and `getToken` gave no fresh one. */
  | 'token_expired'
  /** The upgrade was refused with a status that retrying cannot change (400, 403, 404, …). */
  | 'refused';

export type ConnectionState =
  | { status: 'connecting' }
  | { status: 'connected'; user: string; tenant: string; sessionId: string; protocol: number }
  /** Waiting to try again; `nextAttemptAt` is when (ms since the epoch). */
  | { status: 'reconnecting'; attempt: number; nextAttemptAt: number; lastCloseCode: number | undefined }
  /** The browser says it has no network: no attempt until it comes back. */
  | { status: 'offline' }
  | { status: 'closed'; reason: ClosedReason; code: number | undefined; message: string };

export type Welcome = Extract<ServerFrame, { type: 'welcome' }>;

export interface ConnectionOptions {
  /** `ws://host:port/ws` or `wss://…/ws`, with `user=` on a dev node. */
  url: string;
  /**
   * Protocol version to ask for (`protocol=` in the URL): 1, 2 or 3 (default 3, which needs a
   * server whose `/api/info` lists it; ask for 2 on an older one).
   */
  protocol?: 1 | 2 | 3;
  /**
   * Gives a token (jwt mode): called before the first connection, before refreshing, after
   * 4001 and after a connection failed before `welcome` (a refused client does not retry with
   * the same token). Absent on a dev node.
   */
  getToken?: () => Promise<string> | string;
  /** The WebSocket class: `globalThis.WebSocket` by default. */
  WebSocket?: WebSocketConstructor;
  /**
   * Asks `GET /ws/check` (same query string) why a socket closed before `welcome` when the
   * WebSocket could not say (browsers, Node's built-in one): a 401 then needs a fresh token, a
   * 400 or 403 stops, and a check that cannot reach the node leaves the token trusted.
   * `globalThis.fetch` by default; `null` to treat every such failure as a possible 401.
   */
  fetch?: FetchLike | null;
  backoff?: BackoffOptions;
  /** Send `refresh` this long before the token's `exp` (default 60 s; halfway for short tokens). */
  refreshMarginMs?: number;
  /** Send `ping` after this much silence (default 20 s). */
  pingAfterMs?: number;
  /** Drop a socket silent for this long and reconnect (default 45 s). */
  deadAfterMs?: number;
  /** Drop a socket that has not sent `welcome` within this (default 15 s). */
  welcomeTimeoutMs?: number;
  /** How long a request waits for its reply (default 30 s). */
  requestTimeoutMs?: number;
  /**
   * Writes are paced under the server's command rate: default 16 per second in bursts of 32,
   * 80 % of the server's default (`limits.rate_per_sec` 20, `limits.rate_burst` 40), so that
   * frames bunched up by the network do not find the server's bucket empty; a client refused
   * for 5 s running is closed with 1008. Set it from `/api/info` for another node.
   */
  rate?: { perSecond: number; burst: number };
  /** Called when something goes wrong that the client handles itself (for logging). */
  onWarning?: (message: string) => void;
}

/** What the client learns from the connection. */
export interface ConnectionListener {
  welcome(welcome: Welcome): void;
  frame(frame: ServerFrame): void;
  /** The socket went (or could not open); pending requests have been rejected. */
  down(): void;
}

interface PendingRequest {
  resolve(frame: ServerFrame): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;

/** The `/ws/check` URL that answers for the WebSocket URL `url` (same query string). */
export function checkUrl(url: string): string {
  const scheme = url.replace(/^ws(s?):/i, 'http$1:');
  const hash = scheme.indexOf('#');
  const base = hash < 0 ? scheme : scheme.slice(0, hash);
  const at = base.indexOf('?');
  const [path, query] = at < 0 ? [base, ''] : [base.slice(0, at), base.slice(at)];
  return `${path.replace(/\/+$/, '')}/check${query}`;
}

/**
 * `url` with `params` set in its query string (replacing any of the same name). By hand rather
 * than with `URL.searchParams`, which React Native does not implement.
 */
export function withQuery(url: string, params: Record<string, string>): string {
  const hash = url.indexOf('#');
  const base = hash < 0 ? url : url.slice(0, hash);
  const [path, query = ''] = base.split('?', 2) as [string, string?];
  const kept = query.split('&').filter((pair) => pair && !(decodeURIComponent(pair.split('=')[0]!) in params));
  const added = Object.entries(params).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return `${path}?${[...kept, ...added].join('&')}`;
}

export class Connection {
  state: ConnectionState = { status: 'connecting' };
  private readonly opts: Required<Omit<ConnectionOptions, 'getToken' | 'WebSocket' | 'onWarning' | 'fetch'>> & ConnectionOptions;
  private readonly stateListeners = new Set<(state: ConnectionState) => void>();
  private socket: WebSocketLike | undefined;
  private welcomed = false;
  private failures = 0;
  /** An attempt is between its start and its socket (it may be awaiting `getToken`). */
  private opening = false;
  private readonly WebSocketClass: WebSocketConstructor;
  private readonly fetch: FetchLike | undefined;
  /** The URL of the latest socket, to check why it failed. */
  private url = '';
  private token: string | undefined;
  /** The token of a socket that failed before `welcome`: it may have been refused. */
  private suspectToken: string | undefined;
  private needFreshToken = false;
  private refusedStatus: number | undefined;
  private lastHeard = 0;
  private nextReqId = 1;
  private readonly requests = new Map<string, PendingRequest>();
  private readonly queue: string[] = [];
  private bucket: number;
  private bucketAt = 0;
  private timers: Record<'reconnect' | 'refresh' | 'heartbeat' | 'welcome' | 'pace', ReturnType<typeof setTimeout> | undefined> = {
    reconnect: undefined, refresh: undefined, heartbeat: undefined, welcome: undefined, pace: undefined,
  };
  private readonly onOnline = () => this.online();
  private readonly onOffline = () => this.offline();

  constructor(options: ConnectionOptions, private readonly listener: ConnectionListener) {
    this.opts = {
      protocol: 3,
      backoff: DEFAULT_BACKOFF,
      refreshMarginMs: 60_000,
      pingAfterMs: 20_000,
      deadAfterMs: 45_000,
      welcomeTimeoutMs: 15_000,
      requestTimeoutMs: 30_000,
      rate: { perSecond: 16, burst: 32 },
      ...options,
    };
    this.bucket = this.opts.rate.burst;
    const WebSocketClass = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketClass) throw new Error('no WebSocket class: pass one as `WebSocket` (for example `ws`\'s on Node < 22)');
    this.WebSocketClass = WebSocketClass;
    const fetch = options.fetch === undefined ? (globalThis as { fetch?: FetchLike }).fetch : options.fetch;
    this.fetch = fetch ?? undefined;
    const events = globalThis as unknown as Partial<Pick<Window, 'addEventListener'>>;
    events.addEventListener?.('online', this.onOnline);
    events.addEventListener?.('offline', this.onOffline);
  }

  /** Starts connecting. */
  start(): void {
    void this.open();
  }

  get connected(): boolean {
    return this.welcomed && this.socket?.readyState === OPEN;
  }

  subscribe(listener: (state: ConnectionState) => void): () => void {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Reconnects at once instead of waiting out the backoff. */
  reconnectNow(): void {
    if (this.state.status === 'reconnecting' || this.state.status === 'offline') {
      clearTimeout(this.timers.reconnect);
      void this.open();
    }
  }

  /** Closes for good: no reconnect; pending requests are rejected with `closed`. */
  close(): void {
    if (this.state.status === 'closed') return;
    const socket = this.socket;
    this.teardown(new ClientError('closed', 'the client was closed'));
    try { socket?.close(1000, 'client closing'); } catch { /* already closed */ }
    const events = globalThis as unknown as Partial<Pick<Window, 'removeEventListener'>>;
    events.removeEventListener?.('online', this.onOnline);
    events.removeEventListener?.('offline', this.onOffline);
    this.setState({ status: 'closed', reason: 'client', code: undefined, message: 'closed by the application' });
  }

  /** Writes a command if the connection is up (paced); false when it is not. */
  write(command: CommandKind & { req_id?: string | number }): boolean {
    if (!this.connected) return false;
    const frame = JSON.stringify(command);
    if (frameTooLarge(frame)) {
      this.warn(`a \`${command.type}\` frame over ${MAX_FRAME_BYTES} bytes was not written`);
      return false;
    }
    this.queue.push(frame);
    this.pump();
    return true;
  }

  /** Sends a command with a fresh `req_id` and resolves with its reply (rejects on `error`). */
  request<T extends ServerFrame = ServerFrame>(command: CommandKind, timeoutMs = this.opts.requestTimeoutMs): Promise<T> {
    const reqId = `r${this.nextReqId++}`;
    return new Promise<T>((resolve, reject) => {
      if (frameTooLarge(JSON.stringify(command))) {
        reject(new ClientError('frame_too_large', `the \`${command.type}\` frame is over ${MAX_FRAME_BYTES} bytes`));
        return;
      }
      if (!this.write({ ...command, req_id: reqId })) {
        reject(new ClientError('not_connected', `cannot send \`${command.type}\` while ${this.state.status}`));
        return;
      }
      const timer = setTimeout(() => {
        this.requests.delete(reqId);
        reject(new ClientError('timeout', `no reply to \`${command.type}\` within ${timeoutMs} ms`));
      }, timeoutMs);
      this.requests.set(reqId, { resolve: resolve as (frame: ServerFrame) => void, reject, timer });
    });
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    for (const listener of [...this.stateListeners]) listener(state);
  }

  private warn(message: string): void {
    this.opts.onWarning?.(message);
  }

  /** The state may change while an attempt awaits `getToken`. */
  private isClosed(): boolean {
    return this.state.status === 'closed';
  }

  private isOffline(): boolean {
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    return nav?.onLine === false;
  }

  private async open(): Promise<void> {
    if (this.state.status === 'closed' || this.socket || this.opening) return;
    if (this.isOffline()) return this.offline();
    if (this.state.status !== 'reconnecting') this.setState({ status: 'connecting' });
    let token: string | undefined | null;
    this.opening = true;
    try {
      token = await this.tokenForAttempt();
    } catch (error) {
      this.warn(`getToken failed: ${String(error)}`);
      return this.scheduleReconnect(undefined);
    } finally {
      this.opening = false;
    }
    if (this.isClosed() || this.socket || token === null) return;
    const url = withQuery(this.opts.url, { protocol: String(this.opts.protocol), ...(token === undefined ? {} : { token }) });
    this.url = url;
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketClass(url);
    } catch (error) {
      this.warn(`cannot open a WebSocket: ${String(error)}`);
      return this.scheduleReconnect(undefined);
    }
    this.socket = socket;
    this.welcomed = false;
    this.refusedStatus = undefined;
    this.lastHeard = Date.now();
    this.timers.welcome = setTimeout(() => this.drop('no welcome'), this.opts.welcomeTimeoutMs);
    socket.onmessage = (event) => { if (this.socket === socket) this.receive(event.data); };
    socket.onerror = (event) => {
      // `ws` reports a refused upgrade as "Unexpected server response: 401"; browsers and
      // Node's built-in WebSocket do not say why, and the close that follows is 1006.
      const status = /server response: (\d{3})/.exec(String(event?.message ?? event?.error?.message ?? ''));
      if (status && this.socket === socket) this.refusedStatus = Number(status[1]);
    };
    socket.onclose = (event) => { if (this.socket === socket) this.socketGone(event.code, event.reason); };
  }

  /**
   * The token for the next attempt: the current one while it is valid and not suspect, else a
   * fresh one from `getToken`. `null` means: stop, the token expired for good.
   */
  private async tokenForAttempt(): Promise<string | undefined | null> {
    const getToken = this.opts.getToken;
    if (!getToken) return undefined;
    const stale = (token: string | undefined) => {
      const exp = token === undefined ? undefined : tokenExpiry(token);
      return token === undefined || (exp !== undefined && exp <= Date.now());
    };
    if (this.needFreshToken || stale(this.token) || this.token === this.suspectToken) {
      const fresh = await getToken();
      if (this.needFreshToken && (fresh === this.token || stale(fresh))) {
        this.stop('token_expired', 4001, 'the token expired and getToken gave no fresh one');
        return null;
      }
      if (stale(fresh)) {
        this.stop('token_expired', undefined, 'getToken gave an expired token');
        return null;
      }
      this.token = fresh;
      this.needFreshToken = false;
    }
    return this.token;
  }

  private receive(data: unknown): void {
    this.lastHeard = Date.now();
    let frame: ServerFrame;
    try {
      frame = JSON.parse(String(data));
      if (typeof frame !== 'object' || frame === null || typeof frame.type !== 'string') throw new Error('not a frame');
    } catch {
      this.warn(`ignored a frame that is not one of the protocol: ${String(data).slice(0, 200)}`);
      return;
    }
    if (frame.type === 'welcome') return this.welcome(frame);
    const reqId = 'req_id' in frame ? frame.req_id : undefined;
    const pending = reqId == null ? undefined : this.requests.get(String(reqId));
    if (pending) {
      this.requests.delete(String(reqId));
      clearTimeout(pending.timer);
      if (frame.type === 'error') pending.reject(new ServerError(frame));
      else pending.resolve(frame);
      return;
    }
    if (frame.type === 'refreshed') return;
    this.listener.frame(frame);
  }

  private welcome(welcome: Welcome): void {
    clearTimeout(this.timers.welcome);
    this.welcomed = true;
    this.failures = 0;
    this.suspectToken = undefined;
    this.setState({ status: 'connected', user: welcome.user, tenant: welcome.tenant, sessionId: welcome.session_id, protocol: welcome.protocol });
    this.scheduleHeartbeat();
    this.scheduleRefresh(this.token === undefined ? undefined : tokenExpiry(this.token));
    this.listener.welcome(welcome);
  }

  private scheduleHeartbeat(): void {
    clearTimeout(this.timers.heartbeat);
    this.timers.heartbeat = setTimeout(() => {
      const silent = Date.now() - this.lastHeard;
      if (silent >= this.opts.deadAfterMs) return this.drop('no answer to ping');
      if (silent >= this.opts.pingAfterMs) this.write({ type: 'ping' });
      this.scheduleHeartbeat();
    }, Math.min(this.opts.pingAfterMs, 5_000));
  }

  /** Refreshes the token before `expiresAt`; reschedules itself from the server's `exp`. */
  private scheduleRefresh(expiresAt: number | undefined, delay?: number): void {
    clearTimeout(this.timers.refresh);
    const getToken = this.opts.getToken;
    if (!getToken || expiresAt === undefined) return;
    delay ??= refreshDelay(expiresAt, Date.now(), this.opts.refreshMarginMs);
    this.timers.refresh = setTimeout(async () => {
      try {
        const token = await getToken();
        const reply = await this.request<Extract<ServerFrame, { type: 'refreshed' }>>({ type: 'refresh', token });
        this.token = token;
        this.scheduleRefresh(reply.exp * 1000);
      } catch (error) {
        this.warn(`refresh failed: ${String(error)}`);
        // `forbidden`: the token names another user; retrying cannot help. Otherwise try again
        // while there is time; after `exp` the server closes with 4001 and reconnecting asks
        // for a fresh token.
        if (!this.connected || (error instanceof ServerError && error.code === 'forbidden')) return;
        const remaining = expiresAt - Date.now();
        if (remaining > 0) this.scheduleRefresh(expiresAt, Math.min(backoffDelay(1, this.opts.backoff), remaining / 2));
      }
    }, delay);
  }

  /** Gives up a socket that stopped answering: its close event may take minutes to come. */
  private drop(reason: string): void {
    const socket = this.socket;
    if (!socket) return;
    try { socket.close(4000, reason); } catch { /* ignore */ }
    this.socketGone(4000, reason);
  }

  private teardown(reason = new ClientError('disconnected', 'the connection went before the reply')): void {
    for (const key of Object.keys(this.timers) as (keyof typeof this.timers)[]) {
      clearTimeout(this.timers[key]);
      this.timers[key] = undefined;
    }
    if (this.socket) {
      this.socket.onmessage = this.socket.onclose = this.socket.onerror = null;
      this.socket = undefined;
    }
    this.welcomed = false;
    this.queue.length = 0;
    for (const [reqId, pending] of this.requests) {
      clearTimeout(pending.timer);
      pending.reject(reason);
      this.requests.delete(reqId);
    }
    this.listener.down();
  }

  private socketGone(code: number, reason: string): void {
    const welcomed = this.welcomed;
    const refused = this.refusedStatus;
    this.teardown();
    if (!welcomed && refused === undefined && this.fetch) {
      void this.checkUpgrade(this.fetch, code, reason);
      return;
    }
    this.afterSocket(welcomed, refused, code, reason);
  }

  /**
   * Asks `/ws/check` what the failed upgrade got, then goes on as if the socket had said it.
   * A node that cannot be reached says nothing about the token.
   */
  private async checkUpgrade(fetch: FetchLike, code: number, reason: string): Promise<void> {
    const url = this.url;
    // Backoff state shows while the check is under way.
    this.setState({ status: 'reconnecting', attempt: this.failures + 1, nextAttemptAt: Date.now(), lastCloseCode: code });
    let status: number | undefined;
    try {
      status = (await fetch(checkUrl(url), { cache: 'no-store' })).status;
    } catch {
      status = 503;
    }
    if (this.isClosed() || this.socket || this.opening) return;
    this.afterSocket(false, status === 200 ? 503 : status, code, reason);
  }

  /** Decides what follows a socket that ended (`refused`: the upgrade's status, if known). */
  private afterSocket(welcomed: boolean, refused: number | undefined, code: number, reason: string): void {
    let step: NextStep;
    if (!welcomed && refused !== undefined) {
      step = nextStepAfterRefusal(refused);
      if (step === 'stop') return this.stop('refused', refused, `the upgrade was refused with ${refused}`);
    } else {
      step = nextStepAfterClose(code);
      if (step === 'stop') return this.stop('rate_abuse', code, reason || 'command rate exceeded persistently');
    }
    if (step === 'fresh_token') {
      if (!this.opts.getToken) return this.stop('token_expired', code, reason || 'token expired');
      this.needFreshToken = true;
    } else if (!welcomed && refused === undefined) {
      // Browsers cannot see why an upgrade failed: it may have been a 401, so the token is
      // not used again if getToken can give another.
      this.suspectToken = this.token;
    }
    this.scheduleReconnect(code);
  }

  private scheduleReconnect(code: number | undefined): void {
    if (this.state.status === 'closed') return;
    if (this.isOffline()) return this.offline();
    const delay = backoffDelay(this.failures, this.opts.backoff);
    this.failures += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => void this.open(), delay);
    this.setState({ status: 'reconnecting', attempt: this.failures, nextAttemptAt: Date.now() + delay, lastCloseCode: code });
  }

  private stop(reason: ClosedReason, code: number | undefined, message: string): void {
    this.teardown();
    this.setState({ status: 'closed', reason, code, message });
  }

  private offline(): void {
    if (this.state.status === 'closed' || this.socket) return;
    clearTimeout(this.timers.reconnect);
    this.setState({ status: 'offline' });
  }

  private online(): void {
    if (this.state.status === 'offline' || this.state.status === 'reconnecting') {
      clearTimeout(this.timers.reconnect);
      this.failures = 0;
      void this.open();
    }
  }

  /** Writes queued frames while the token bucket allows; waits for it otherwise. */
  private pump(): void {
    const { perSecond, burst } = this.opts.rate;
    const now = Date.now();
    this.bucket = Math.min(burst, this.bucket + ((now - this.bucketAt) * perSecond) / 1000);
    this.bucketAt = now;
    while (this.queue.length && this.bucket >= 1 && this.socket?.readyState === OPEN) {
      this.socket.send(this.queue.shift()!);
      this.bucket -= 1;
    }
    if (this.queue.length && this.timers.pace === undefined) {
      this.timers.pace = setTimeout(() => {
        this.timers.pace = undefined;
        this.pump();
      }, Math.ceil(((1 - this.bucket) * 1000) / perSecond));
    }
  }
}
