// @peroxo/client, bundled for the chat page (web/chat.html imports it from /peroxo-client.js).
// Generated from clients/js/src by `npm run build:web` in clients/js: do not edit by hand.

// src/backoff.ts
function nextStepAfterClose(code) {
  if (code === 1008) return "stop";
  if (code === 4001) return "fresh_token";
  return "reconnect";
}
function nextStepAfterRefusal(status) {
  if (status === 401) return "fresh_token";
  if (status === 429 || status >= 500 && status <= 599) return "reconnect";
  return "stop";
}
var DEFAULT_BACKOFF = { initialMs: 500, maxMs: 3e4 };
function backoffDelay(failures, options = DEFAULT_BACKOFF, random = Math.random) {
  const base = Math.min(options.maxMs, options.initialMs * 2 ** Math.min(failures, 20));
  return Math.round(base / 2 + random() * base);
}

// src/errors.ts
var ServerError = class extends Error {
  /** The server's error code, as on the wire. */
  code;
  /** Whether sending the same command again later may succeed. */
  retryable;
  reqId;
  clientMsgId;
  constructor(frame) {
    super(`${frame.code}: ${frame.message}`);
    this.name = "ServerError";
    this.code = frame.code;
    this.retryable = frame.retryable;
    this.reqId = frame.req_id ?? void 0;
    this.clientMsgId = frame.client_msg_id ?? void 0;
  }
};
var ClientError = class extends Error {
  code;
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "ClientError";
    this.code = code;
  }
};

// src/limits.ts
var MAX_FRAME_BYTES = 65536;
function frameTooLarge(frame) {
  return frame.length * 3 > MAX_FRAME_BYTES && new TextEncoder().encode(frame).length > MAX_FRAME_BYTES;
}

// src/token.ts
function tokenExpiry(token) {
  const payload = token.split(".")[1];
  if (!payload) return void 0;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64.padEnd(base64.length + (4 - base64.length % 4) % 4, "=")));
    return typeof claims.exp === "number" ? claims.exp * 1e3 : void 0;
  } catch {
    return void 0;
  }
}
function refreshDelay(expiresAt, now, marginMs) {
  const remaining = expiresAt - now;
  if (remaining <= 0) return 0;
  return Math.max(0, remaining - Math.min(marginMs, remaining / 2));
}

// src/connection.ts
var OPEN = 1;
function checkUrl(url) {
  const scheme = url.replace(/^ws(s?):/i, "http$1:");
  const hash = scheme.indexOf("#");
  const base = hash < 0 ? scheme : scheme.slice(0, hash);
  const at = base.indexOf("?");
  const [path, query] = at < 0 ? [base, ""] : [base.slice(0, at), base.slice(at)];
  return `${path.replace(/\/+$/, "")}/check${query}`;
}
function withQuery(url, params) {
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  const [path, query = ""] = base.split("?", 2);
  const kept = query.split("&").filter((pair) => pair && !(decodeURIComponent(pair.split("=")[0]) in params));
  const added = Object.entries(params).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return `${path}?${[...kept, ...added].join("&")}`;
}
var Connection = class {
  constructor(options, listener) {
    this.listener = listener;
    this.opts = {
      protocol: 3,
      backoff: DEFAULT_BACKOFF,
      refreshMarginMs: 6e4,
      pingAfterMs: 2e4,
      deadAfterMs: 45e3,
      welcomeTimeoutMs: 15e3,
      requestTimeoutMs: 3e4,
      rate: { perSecond: 16, burst: 32 },
      ...options
    };
    this.bucket = this.opts.rate.burst;
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (!WebSocketClass) throw new Error("no WebSocket class: pass one as `WebSocket` (for example `ws`'s on Node < 22)");
    this.WebSocketClass = WebSocketClass;
    const fetch = options.fetch === void 0 ? globalThis.fetch : options.fetch;
    this.fetch = fetch ?? void 0;
    const events = globalThis;
    events.addEventListener?.("online", this.onOnline);
    events.addEventListener?.("offline", this.onOffline);
  }
  listener;
  state = { status: "connecting" };
  opts;
  stateListeners = /* @__PURE__ */ new Set();
  socket;
  welcomed = false;
  failures = 0;
  /** An attempt is between its start and its socket (it may be awaiting `getToken`). */
  opening = false;
  WebSocketClass;
  fetch;
  /** The URL of the latest socket, to check why it failed. */
  url = "";
  token;
  /** The token of a socket that failed before `welcome`: it may have been refused. */
  suspectToken;
  needFreshToken = false;
  refusedStatus;
  lastHeard = 0;
  nextReqId = 1;
  requests = /* @__PURE__ */ new Map();
  queue = [];
  bucket;
  bucketAt = 0;
  timers = {
    reconnect: void 0,
    refresh: void 0,
    heartbeat: void 0,
    welcome: void 0,
    pace: void 0
  };
  onOnline = () => this.online();
  onOffline = () => this.offline();
  /** Starts connecting. */
  start() {
    void this.open();
  }
  get connected() {
    return this.welcomed && this.socket?.readyState === OPEN;
  }
  subscribe(listener) {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }
  /** Reconnects at once instead of waiting out the backoff. */
  reconnectNow() {
    if (this.state.status === "reconnecting" || this.state.status === "offline") {
      clearTimeout(this.timers.reconnect);
      void this.open();
    }
  }
  /** Closes for good: no reconnect; pending requests are rejected with `closed`. */
  close() {
    if (this.state.status === "closed") return;
    const socket = this.socket;
    this.teardown(new ClientError("closed", "the client was closed"));
    try {
      socket?.close(1e3, "client closing");
    } catch {
    }
    const events = globalThis;
    events.removeEventListener?.("online", this.onOnline);
    events.removeEventListener?.("offline", this.onOffline);
    this.setState({ status: "closed", reason: "client", code: void 0, message: "closed by the application" });
  }
  /** Writes a command if the connection is up (paced); false when it is not. */
  write(command) {
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
  request(command, timeoutMs = this.opts.requestTimeoutMs) {
    const reqId = `r${this.nextReqId++}`;
    return new Promise((resolve, reject) => {
      if (frameTooLarge(JSON.stringify(command))) {
        reject(new ClientError("frame_too_large", `the \`${command.type}\` frame is over ${MAX_FRAME_BYTES} bytes`));
        return;
      }
      if (!this.write({ ...command, req_id: reqId })) {
        reject(new ClientError("not_connected", `cannot send \`${command.type}\` while ${this.state.status}`));
        return;
      }
      const timer = setTimeout(() => {
        this.requests.delete(reqId);
        reject(new ClientError("timeout", `no reply to \`${command.type}\` within ${timeoutMs} ms`));
      }, timeoutMs);
      this.requests.set(reqId, { resolve, reject, timer });
    });
  }
  setState(state) {
    this.state = state;
    for (const listener of [...this.stateListeners]) listener(state);
  }
  warn(message) {
    this.opts.onWarning?.(message);
  }
  /** The state may change while an attempt awaits `getToken`. */
  isClosed() {
    return this.state.status === "closed";
  }
  isOffline() {
    const nav = globalThis.navigator;
    return nav?.onLine === false;
  }
  async open() {
    if (this.state.status === "closed" || this.socket || this.opening) return;
    if (this.isOffline()) return this.offline();
    if (this.state.status !== "reconnecting") this.setState({ status: "connecting" });
    let token;
    this.opening = true;
    try {
      token = await this.tokenForAttempt();
    } catch (error) {
      this.warn(`getToken failed: ${String(error)}`);
      return this.scheduleReconnect(void 0);
    } finally {
      this.opening = false;
    }
    if (this.isClosed() || this.socket || token === null) return;
    const url = withQuery(this.opts.url, { protocol: String(this.opts.protocol), ...token === void 0 ? {} : { token } });
    this.url = url;
    let socket;
    try {
      socket = new this.WebSocketClass(url);
    } catch (error) {
      this.warn(`cannot open a WebSocket: ${String(error)}`);
      return this.scheduleReconnect(void 0);
    }
    this.socket = socket;
    this.welcomed = false;
    this.refusedStatus = void 0;
    this.lastHeard = Date.now();
    this.timers.welcome = setTimeout(() => this.drop("no welcome"), this.opts.welcomeTimeoutMs);
    socket.onmessage = (event) => {
      if (this.socket === socket) this.receive(event.data);
    };
    socket.onerror = (event) => {
      const status = /server response: (\d{3})/.exec(String(event?.message ?? event?.error?.message ?? ""));
      if (status && this.socket === socket) this.refusedStatus = Number(status[1]);
    };
    socket.onclose = (event) => {
      if (this.socket === socket) this.socketGone(event.code, event.reason);
    };
  }
  /**
   * The token for the next attempt: the current one while it is valid and not suspect, else a
   * fresh one from `getToken`. `null` means: stop, the token expired for good.
   */
  async tokenForAttempt() {
    const getToken = this.opts.getToken;
    if (!getToken) return void 0;
    const stale = (token) => {
      const exp = token === void 0 ? void 0 : tokenExpiry(token);
      return token === void 0 || exp !== void 0 && exp <= Date.now();
    };
    if (this.needFreshToken || stale(this.token) || this.token === this.suspectToken) {
      const fresh = await getToken();
      if (this.needFreshToken && (fresh === this.token || stale(fresh))) {
        this.stop("token_expired", 4001, "the token expired and getToken gave no fresh one");
        return null;
      }
      if (stale(fresh)) {
        this.stop("token_expired", void 0, "getToken gave an expired token");
        return null;
      }
      this.token = fresh;
      this.needFreshToken = false;
    }
    return this.token;
  }
  receive(data) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(String(data));
      if (typeof frame !== "object" || frame === null || typeof frame.type !== "string") throw new Error("not a frame");
    } catch {
      this.warn(`ignored a frame that is not one of the protocol: ${String(data).slice(0, 200)}`);
      return;
    }
    if (frame.type === "welcome") return this.welcome(frame);
    const reqId = "req_id" in frame ? frame.req_id : void 0;
    const pending = reqId == null ? void 0 : this.requests.get(String(reqId));
    if (pending) {
      this.requests.delete(String(reqId));
      clearTimeout(pending.timer);
      if (frame.type === "error") pending.reject(new ServerError(frame));
      else pending.resolve(frame);
      return;
    }
    if (frame.type === "refreshed") return;
    this.listener.frame(frame);
  }
  welcome(welcome) {
    clearTimeout(this.timers.welcome);
    this.welcomed = true;
    this.failures = 0;
    this.suspectToken = void 0;
    this.setState({ status: "connected", user: welcome.user, tenant: welcome.tenant, sessionId: welcome.session_id, protocol: welcome.protocol });
    this.scheduleHeartbeat();
    this.scheduleRefresh(this.token === void 0 ? void 0 : tokenExpiry(this.token));
    this.listener.welcome(welcome);
  }
  scheduleHeartbeat() {
    clearTimeout(this.timers.heartbeat);
    this.timers.heartbeat = setTimeout(() => {
      const silent = Date.now() - this.lastHeard;
      if (silent >= this.opts.deadAfterMs) return this.drop("no answer to ping");
      if (silent >= this.opts.pingAfterMs) this.write({ type: "ping" });
      this.scheduleHeartbeat();
    }, Math.min(this.opts.pingAfterMs, 5e3));
  }
  /** Refreshes the token before `expiresAt`; reschedules itself from the server's `exp`. */
  scheduleRefresh(expiresAt, delay) {
    clearTimeout(this.timers.refresh);
    const getToken = this.opts.getToken;
    if (!getToken || expiresAt === void 0) return;
    delay ??= refreshDelay(expiresAt, Date.now(), this.opts.refreshMarginMs);
    this.timers.refresh = setTimeout(async () => {
      try {
        const token = await getToken();
        const reply = await this.request({ type: "refresh", token });
        this.token = token;
        this.scheduleRefresh(reply.exp * 1e3);
      } catch (error) {
        this.warn(`refresh failed: ${String(error)}`);
        if (!this.connected || error instanceof ServerError && error.code === "forbidden") return;
        const remaining = expiresAt - Date.now();
        if (remaining > 0) this.scheduleRefresh(expiresAt, Math.min(backoffDelay(1, this.opts.backoff), remaining / 2));
      }
    }, delay);
  }
  /** Gives up a socket that stopped answering: its close event may take minutes to come. */
  drop(reason) {
    const socket = this.socket;
    if (!socket) return;
    try {
      socket.close(4e3, reason);
    } catch {
    }
    this.socketGone(4e3, reason);
  }
  teardown(reason = new ClientError("disconnected", "the connection went before the reply")) {
    for (const key2 of Object.keys(this.timers)) {
      clearTimeout(this.timers[key2]);
      this.timers[key2] = void 0;
    }
    if (this.socket) {
      this.socket.onmessage = this.socket.onclose = this.socket.onerror = null;
      this.socket = void 0;
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
  socketGone(code, reason) {
    const welcomed = this.welcomed;
    const refused = this.refusedStatus;
    this.teardown();
    if (!welcomed && refused === void 0 && this.fetch) {
      void this.checkUpgrade(this.fetch, code, reason);
      return;
    }
    this.afterSocket(welcomed, refused, code, reason);
  }
  /**
   * Asks `/ws/check` what the failed upgrade got, then goes on as if the socket had said it.
   * A node that cannot be reached says nothing about the token.
   */
  async checkUpgrade(fetch, code, reason) {
    const url = this.url;
    this.setState({ status: "reconnecting", attempt: this.failures + 1, nextAttemptAt: Date.now(), lastCloseCode: code });
    let status;
    try {
      status = (await fetch(checkUrl(url), { cache: "no-store" })).status;
    } catch {
      status = 503;
    }
    if (this.isClosed() || this.socket || this.opening) return;
    this.afterSocket(false, status === 200 ? 503 : status, code, reason);
  }
  /** Decides what follows a socket that ended (`refused`: the upgrade's status, if known). */
  afterSocket(welcomed, refused, code, reason) {
    let step;
    if (!welcomed && refused !== void 0) {
      step = nextStepAfterRefusal(refused);
      if (step === "stop") return this.stop("refused", refused, `the upgrade was refused with ${refused}`);
    } else {
      step = nextStepAfterClose(code);
      if (step === "stop") return this.stop("rate_abuse", code, reason || "command rate exceeded persistently");
    }
    if (step === "fresh_token") {
      if (!this.opts.getToken) return this.stop("token_expired", code, reason || "token expired");
      this.needFreshToken = true;
    } else if (!welcomed && refused === void 0) {
      this.suspectToken = this.token;
    }
    this.scheduleReconnect(code);
  }
  scheduleReconnect(code) {
    if (this.state.status === "closed") return;
    if (this.isOffline()) return this.offline();
    const delay = backoffDelay(this.failures, this.opts.backoff);
    this.failures += 1;
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => void this.open(), delay);
    this.setState({ status: "reconnecting", attempt: this.failures, nextAttemptAt: Date.now() + delay, lastCloseCode: code });
  }
  stop(reason, code, message) {
    this.teardown();
    this.setState({ status: "closed", reason, code, message });
  }
  offline() {
    if (this.state.status === "closed" || this.socket) return;
    clearTimeout(this.timers.reconnect);
    this.setState({ status: "offline" });
  }
  online() {
    if (this.state.status === "offline" || this.state.status === "reconnecting") {
      clearTimeout(this.timers.reconnect);
      this.failures = 0;
      void this.open();
    }
  }
  /** Writes queued frames while the token bucket allows; waits for it otherwise. */
  pump() {
    const { perSecond, burst } = this.opts.rate;
    const now = Date.now();
    this.bucket = Math.min(burst, this.bucket + (now - this.bucketAt) * perSecond / 1e3);
    this.bucketAt = now;
    while (this.queue.length && this.bucket >= 1 && this.socket?.readyState === OPEN) {
      this.socket.send(this.queue.shift());
      this.bucket -= 1;
    }
    if (this.queue.length && this.timers.pace === void 0) {
      this.timers.pace = setTimeout(() => {
        this.timers.pace = void 0;
        this.pump();
      }, Math.ceil((1 - this.bucket) * 1e3 / perSecond));
    }
  }
};

// src/lifecycle.ts
var QUOTE_EXCERPT_CHARS = 100;
function quoteExcerpt(text) {
  const chars = Array.from(text);
  return chars.length <= QUOTE_EXCERPT_CHARS ? text : chars.slice(0, QUOTE_EXCERPT_CHARS).join("");
}
function edited(message, text, ts) {
  if (message.deleted || message.text === text && message.edited_ts === ts) return message;
  return { ...message, text, edited_ts: ts };
}
function tombstoned(message, by, ts) {
  if (message.deleted) return message;
  const { reactions: _reactions, ...rest } = message;
  return { ...rest, text: "", deleted: { by, ts } };
}
function reacted(message, emoji, mine, added) {
  if (message.deleted) return message;
  const reactions = message.reactions ?? [];
  const at = reactions.findIndex((r) => r.emoji === emoji);
  const current = at < 0 ? void 0 : reactions[at];
  if (mine && (current?.mine ?? false) === added) return message;
  let next;
  if (added) {
    next = current ? reactions.map((r, i) => i === at ? { ...r, count: r.count + 1, mine: r.mine || mine } : r) : [...reactions, { emoji, count: 1, mine }];
  } else {
    if (!current) return message;
    next = current.count <= 1 ? reactions.filter((_, i) => i !== at) : reactions.map((r, i) => i === at ? { ...r, count: r.count - 1, mine: mine ? false : r.mine } : r);
  }
  const { reactions: _old, ...rest } = message;
  return next.length ? { ...rest, reactions: next } : rest;
}
function requoted(message, quotedId, text) {
  const quote = message.reply_to;
  if (!quote || quote.message_id !== quotedId) return message;
  const next = text === null ? { ...quote, excerpt: "", deleted: true } : { ...quote, excerpt: quoteExcerpt(text) };
  if (next.excerpt === quote.excerpt && next.deleted === quote.deleted) return message;
  return { ...message, reply_to: next };
}

// src/conversations.ts
function compareIds(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}
function participants(id) {
  const at = id.indexOf(":");
  return [id.slice(0, at), id.slice(at + 1)];
}
var ConversationStore = class {
  conversations = /* @__PURE__ */ new Map();
  listeners = /* @__PURE__ */ new Set();
  changed = /* @__PURE__ */ new Set();
  /** Conversation and message id → the seq its copy is as of, when above the message's own seq. */
  asOf = /* @__PURE__ */ new Map();
  /** Conversation and message id of a reply → the seq its quote is as of, when above its copy's. */
  quoteAsOf = /* @__PURE__ */ new Map();
  /** Conversation id → the `last_seq` of the list page its summary came from (protocol 3). */
  listedAsOf = /* @__PURE__ */ new Map();
  /**
   * Conversation and message id of messages the unread count does not count because they
   * were deleted: their view was a tombstone when the stream brought them, or their delete
   * was applied. A delete event for one of them lowers nothing.
   */
  uncounted = /* @__PURE__ */ new Set();
  me = "";
  /** Every conversation, the most recent activity first. */
  list() {
    return [...this.conversations.values()].sort((a, b) => b.activitySeq - a.activitySeq);
  }
  get(id) {
    return this.conversations.get(id);
  }
  /** The sum of the unread counts. */
  totalUnread() {
    let total = 0;
    for (const c of this.conversations.values()) total += c.unreadCount;
    return total;
  }
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  /** Tells subscribers what changed since the last call. */
  flush() {
    if (!this.changed.size) return;
    const changed = [...this.changed];
    this.changed = /* @__PURE__ */ new Set();
    for (const listener of [...this.listeners]) listener(changed);
  }
  conversation(id) {
    let c = this.conversations.get(id);
    if (!c) {
      const group = id.startsWith("g~");
      let peer;
      if (!group) {
        const [a, b] = participants(id);
        peer = a === this.me ? b : a;
      }
      c = {
        id,
        kind: group ? "group" : "direct",
        peer,
        title: void 0,
        role: void 0,
        memberCount: group ? void 0 : peer === this.me ? 1 : 2,
        members: void 0,
        messages: [],
        lastMessage: void 0,
        unreadCount: 0,
        readMarker: "0",
        peerReadMarker: group ? void 0 : "0",
        receipts: /* @__PURE__ */ new Map(),
        typing: [],
        activitySeq: 0
      };
      this.conversations.set(id, c);
    }
    this.changed.add(id);
    return c;
  }
  /** Adds a conversation the stream has not named yet (a direct one started by the user). */
  add(id) {
    const c = this.conversation(id);
    this.flush();
    return c;
  }
  /** The list, to keep across reloads (see {@link ConversationSnapshot}). */
  snapshot() {
    return {
      version: 1,
      conversations: this.list().map((c) => ({
        id: c.id,
        kind: c.kind,
        peer: c.peer,
        title: c.title,
        role: c.role,
        memberCount: c.memberCount,
        lastMessage: c.lastMessage,
        unreadCount: c.unreadCount,
        readMarker: c.readMarker,
        peerReadMarker: c.peerReadMarker,
        activitySeq: c.activitySeq
      }))
    };
  }
  /**
   * Merges a {@link ConversationStore.snapshot} kept earlier, before the stream is applied: what the stream and
   * the server's pages say later wins. Anything malformed is left out.
   */
  restore(snapshot) {
    const saved = snapshot?.conversations;
    if (snapshot?.version !== 1 || !Array.isArray(saved)) return;
    for (const v of saved) {
      if (typeof v?.id !== "string" || !/^(g~|[^:]+:[^:]+$)/.test(v.id) || this.conversations.has(v.id)) continue;
      const c = this.conversation(v.id);
      const text = (x) => typeof x === "string" ? x : void 0;
      const count = (x) => Number.isSafeInteger(x) && x >= 0 ? x : void 0;
      c.title = text(v.title);
      c.role = text(v.role);
      c.memberCount = count(v.memberCount) ?? c.memberCount;
      c.unreadCount = count(v.unreadCount) ?? 0;
      c.readMarker = text(v.readMarker) ?? "0";
      if (c.kind === "direct") c.peerReadMarker = text(v.peerReadMarker) ?? "0";
      c.activitySeq = count(v.activitySeq) ?? 0;
      const m = v.lastMessage;
      if (m && typeof m.message_id === "string" && typeof m.text === "string" && m.conversation_id === v.id) {
        c.lastMessage = m;
        c.messages = [m];
      }
    }
    this.flush();
  }
  /** Applies stream entries, in seq order. */
  apply(entries) {
    for (const entry of entries) {
      if (entry.kind === "message") this.message(entry.message, entry.asOf);
      else this.event(entry.event);
    }
    this.flush();
  }
  message(view, asOf) {
    const c = this.conversation(view.conversation_id);
    this.addMessages(c, [view], asOf);
    if (view.seq <= c.activitySeq) return;
    c.activitySeq = view.seq;
    const m = this.find(c, view.message_id) ?? view;
    if (m.deleted) this.uncounted.add(key(c.id, m.message_id));
    if (m.deleted) c.lastMessage ??= m;
    else if (!c.lastMessage || c.lastMessage.deleted || compareIds(m.message_id, c.lastMessage.message_id) > 0) c.lastMessage = m;
    if (m.from === this.me) {
      if (compareIds(m.message_id, c.readMarker) > 0) c.readMarker = m.message_id;
      c.unreadCount = 0;
    } else if (!m.deleted && compareIds(m.message_id, c.readMarker) > 0) {
      c.unreadCount += 1;
    }
  }
  event(e) {
    const c = this.conversation(e.conversation_id);
    const membership = !["read_marker", "read_receipt", "message_edited", "message_deleted", "reaction_added", "reaction_removed"].includes(e.event);
    if (membership && e.seq > c.activitySeq) c.activitySeq = e.seq;
    const listed = e.seq <= (this.listedAsOf.get(c.id) ?? 0);
    switch (e.event) {
      case "group_created":
        if (!listed) {
          c.title = e.title ?? c.title;
          c.memberCount = e.member_count ?? c.memberCount;
          if (e.actor === this.me) c.role = "owner";
        }
        c.role ??= e.actor === this.me ? "owner" : "member";
        break;
      case "members_added":
        for (const user of e.users ?? []) {
          if (!c.members?.has(user)) {
            c.members?.set(user, "member");
            if (c.memberCount !== void 0 && !listed) c.memberCount += 1;
          }
          if (user === this.me) c.role ??= "member";
        }
        break;
      case "member_left":
        if (e.user === this.me) {
          this.conversations.delete(c.id);
          break;
        }
        if (e.user !== void 0 && e.user !== null && (!c.members || c.members.delete(e.user)) && c.memberCount && !listed) c.memberCount -= 1;
        break;
      case "role_changed":
        if (e.user && e.role) {
          c.members?.set(e.user, e.role);
          if (e.user === this.me && !listed) c.role = e.role;
        }
        break;
      case "group_renamed":
        if (!listed) c.title = e.title ?? c.title;
        break;
      case "read_marker":
        if (listed) break;
        if (e.message_id) c.readMarker = e.message_id;
        if (e.unread_count !== void 0 && e.unread_count !== null) c.unreadCount = e.unread_count;
        break;
      case "read_receipt":
        if (e.message_id && (!c.peerReadMarker || compareIds(e.message_id, c.peerReadMarker) > 0)) c.peerReadMarker = e.message_id;
        break;
      case "message_edited":
        if (e.message_id) this.edit(c, e.message_id, e.text ?? "", e.ts, e.seq);
        break;
      case "message_deleted":
        if (e.message_id) this.tombstone(c, e.message_id, e.actor, e.ts, e.moderated === true, e.seq, listed);
        break;
      case "reaction_added":
      case "reaction_removed":
        if (e.message_id && e.emoji && this.changes(c, e.message_id, e.seq)) {
          const added = e.event === "reaction_added";
          this.update(c, e.message_id, (m) => reacted(m, e.emoji, e.actor === this.me, added));
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
  messageState(view, seq) {
    if (seq === void 0) return;
    this.addMessages(this.conversation(view.conversation_id), [view], seq);
    this.flush();
  }
  /** The quote a reply to message `messageId` shows, from the message as known here. */
  quoteOf(conversationId, messageId) {
    const c = this.conversations.get(conversationId);
    const m = c && this.find(c, messageId);
    if (!m) return void 0;
    return m.deleted ? { message_id: m.message_id, from: m.from, excerpt: "", deleted: true } : { message_id: m.message_id, from: m.from, excerpt: quoteExcerpt(m.text) };
  }
  /** The seq the copy `m` is as of. */
  copyAsOf(c, m) {
    return Math.max(m.seq, this.asOf.get(key(c.id, m.message_id)) ?? 0);
  }
  /**
   * Whether the event of seq `seq` changes the copy of message `id`: there is one, and it is
   * as of an earlier seq. If so, the copy counts as of `seq` from now on.
   */
  changes(c, id, seq) {
    const copy = this.find(c, id);
    if (!copy || seq <= this.copyAsOf(c, copy)) return false;
    this.asOf.set(key(c.id, id), seq);
    return true;
  }
  /** A known message by id (also the preview, which may not be among `messages`). */
  find(c, id) {
    return c.messages.find((m) => m.message_id === id) ?? (c.lastMessage?.message_id === id ? c.lastMessage : void 0);
  }
  /** Replaces a message by `change(message)`, in `messages` and as the preview. */
  update(c, id, change) {
    let changed = false;
    const replace = (m) => {
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
  requote(c, id, text, seq) {
    const done2 = /* @__PURE__ */ new Map();
    const replace = (m) => {
      if (m.reply_to?.message_id !== id) return m;
      const again = done2.get(m.message_id);
      if (again) return again;
      const reply = key(c.id, m.message_id);
      if (seq <= Math.max(this.copyAsOf(c, m), this.quoteAsOf.get(reply) ?? 0)) return m;
      this.quoteAsOf.set(reply, seq);
      const next = requoted(m, id, text);
      done2.set(m.message_id, next);
      if (next !== m) this.changed.add(c.id);
      return next;
    };
    c.messages = c.messages.map(replace);
    if (c.lastMessage) c.lastMessage = replace(c.lastMessage);
  }
  /** A reply's quote, from a view as of `at`, follows a newer copy of what it quotes. */
  quoteFromCopy(c, reply, at) {
    this.quoteAsOf.delete(key(c.id, reply.message_id));
    const quoted = reply.reply_to && this.find(c, reply.reply_to.message_id);
    if (!quoted) return;
    const seq = this.copyAsOf(c, quoted);
    if (seq > at) this.requote(c, quoted.message_id, quoted.deleted ? null : quoted.text, seq);
  }
  /** The edit of stream entry `seq`. */
  edit(c, id, text, ts, seq) {
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
  tombstone(c, id, by, ts, moderated, seq, listed) {
    const before = this.find(c, id);
    const counted = key(c.id, id);
    if (!listed && !this.uncounted.has(counted)) {
      const sender = before?.from ?? (moderated ? void 0 : by);
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
  previewBack(c, id) {
    if (c.lastMessage?.message_id !== id || !c.lastMessage.deleted) return;
    const previous = c.messages.filter((m) => !m.deleted && compareIds(m.message_id, id) < 0).pop();
    if (previous) c.lastMessage = previous;
    this.changed.add(c.id);
  }
  /**
   * Merges a page of the conversation list; `lastSeq`: the page's `last_seq` (protocol 3), the
   * seq everything in it is as of (see {@link ConversationStore}).
   */
  summaries(views, lastSeq) {
    for (const v of views) {
      const c = this.conversation(v.conversation_id);
      if (lastSeq !== void 0) this.listedAsOf.set(c.id, lastSeq);
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
        const preview = this.find(c, v.last_message.message_id);
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
  history(conversationId, messages, lastSeq) {
    this.addMessages(this.conversation(conversationId), messages, lastSeq);
    this.flush();
  }
  members(conversationId, members) {
    const c = this.conversation(conversationId);
    c.members = new Map(members.map((m) => [m.user, m.role]));
    c.memberCount = members.length;
    c.role = c.members.get(this.me) ?? c.role;
    this.flush();
  }
  receipt(conversationId, user, messageId) {
    this.conversation(conversationId).receipts.set(user, messageId);
    this.flush();
  }
  setTyping(conversationId, users) {
    this.conversation(conversationId).typing = users;
    this.flush();
  }
  /** The local read state after `mark_read`/`mark_unread` answered. */
  readState(conversationId, readMarker, unreadCount) {
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
  addMessages(c, views, asOf = 0) {
    const fresh = [];
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
};
function key(conversationId, messageId) {
  return `${conversationId} ${messageId}`;
}

// src/outbox.ts
function isConversationId(to) {
  return to.includes(":") || to.startsWith("g~");
}
function sendCommand(send) {
  const { to, text, clientMsgId: client_msg_id, replyTo } = send;
  if (!isConversationId(to)) return { type: "send", to, text, client_msg_id };
  return { type: "send", conversation_id: to, text, client_msg_id, ...replyTo ? { reply_to: replyTo } : {} };
}
function newClientMsgId() {
  const bytes = new Uint8Array(16);
  const crypto = globalThis.crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
var Outbox = class {
  constructor(store, host, backoff) {
    this.store = store;
    this.host = host;
    this.backoff = backoff;
    this.loaded = store.pendingSends().then((sends) => {
      for (const send of sends.sort((a, b) => a.createdAt - b.createdAt)) {
        if (!this.entries.has(send.clientMsgId)) this.entries.set(send.clientMsgId, this.entry(send));
      }
      if (this.host.connected()) this.writeAll();
    });
  }
  store;
  host;
  backoff;
  entries = /* @__PURE__ */ new Map();
  submitted = 0;
  /** Resolves once the sends the store kept from an earlier run are back in the outbox. */
  loaded;
  entry(send) {
    return { send, onWire: false, retries: 0, timer: void 0, waiters: [] };
  }
  /** The sends not acked yet, oldest first. */
  pending() {
    return [...this.entries.values()].map((e) => ({ ...e.send }));
  }
  /** Keeps the send, writes it when connected, and resolves with its ack. */
  submit(to, text, clientMsgId = newClientMsgId(), replyTo) {
    if (frameTooLarge(JSON.stringify(sendCommand({ clientMsgId, to, text, ...replyTo ? { replyTo } : {}, createdAt: 0 })))) {
      return Promise.reject(new ClientError("frame_too_large", `the send is over ${MAX_FRAME_BYTES} bytes`));
    }
    const existing = this.entries.get(clientMsgId);
    if (existing) return new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    const createdAt = Math.max(Date.now(), this.submitted + 1);
    this.submitted = createdAt;
    const entry = this.entry({ clientMsgId, to, text, ...replyTo ? { replyTo } : {}, createdAt });
    this.entries.set(clientMsgId, entry);
    const result = new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
    void this.store.putSend(entry.send).then(
      () => this.transmit(entry),
      () => this.transmit(entry)
      // still try to deliver it: it only will not survive a restart
    );
    return result;
  }
  /** After `welcome`: writes every send, in submission order. */
  writeAll() {
    for (const entry of this.entries.values()) {
      clearTimeout(entry.timer);
      entry.timer = void 0;
      entry.onWire = false;
      this.transmit(entry);
    }
  }
  /** The connection went: nothing is on the wire any more, and retries wait for `welcome`. */
  disconnected() {
    for (const entry of this.entries.values()) {
      clearTimeout(entry.timer);
      entry.timer = void 0;
      entry.onWire = false;
    }
  }
  ack(frame) {
    const ack = {
      clientMsgId: frame.client_msg_id,
      messageId: frame.message_id,
      conversationId: frame.conversation_id,
      seq: frame.seq,
      ts: frame.ts,
      duplicate: frame.duplicate
    };
    return this.settle(frame.client_msg_id, ack);
  }
  /**
   * The user's own message came back (a sync, or a copy) while its send still waited for an
   * ack: the earlier attempt was committed, so the send is settled as a duplicate.
   */
  committed(message) {
    const id = message.client_msg_id;
    if (!id || !this.entries.has(id)) return;
    this.settle(id, { clientMsgId: id, messageId: message.message_id, conversationId: message.conversation_id, seq: message.seq, ts: message.ts, duplicate: true });
  }
  /** Handles an `error` frame that concerns sends; false when it concerns none. */
  error(frame) {
    if (frame.client_msg_id == null) {
      if (frame.code === "internal" && frame.req_id == null) {
        for (const entry2 of this.entries.values()) if (entry2.onWire) this.retry(entry2, 0);
      }
      return false;
    }
    const entry = this.entries.get(frame.client_msg_id);
    if (!entry) return false;
    if (frame.retryable) {
      entry.retries += 1;
      this.retry(entry, backoffDelay(entry.retries, this.backoff));
    } else {
      this.entries.delete(frame.client_msg_id);
      void this.store.deleteSend(frame.client_msg_id).catch(() => void 0);
      const error = new ServerError(frame);
      for (const waiter of entry.waiters) waiter.reject(error);
      this.host.failed(entry.send, error);
    }
    return true;
  }
  retry(entry, delay) {
    entry.onWire = false;
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = void 0;
      this.transmit(entry);
    }, delay);
  }
  transmit(entry) {
    if (entry.onWire || entry.timer !== void 0 || this.entries.get(entry.send.clientMsgId) !== entry) return;
    entry.onWire = this.host.write(sendCommand(entry.send));
  }
  settle(clientMsgId, ack) {
    const entry = this.entries.get(clientMsgId);
    if (!entry) return void 0;
    this.entries.delete(clientMsgId);
    clearTimeout(entry.timer);
    void this.store.deleteSend(clientMsgId).catch(() => void 0);
    for (const waiter of entry.waiters) waiter.resolve(ack);
    this.host.acked(entry.send, ack);
    return entry.send;
  }
};

// src/presence.ts
var CHUNK = 1e3;
var Presence = class {
  constructor(host, backoff) {
    this.host = host;
    this.backoff = backoff;
  }
  host;
  backoff;
  users = /* @__PURE__ */ new Set();
  groups = /* @__PURE__ */ new Set();
  status = /* @__PURE__ */ new Map();
  listeners = /* @__PURE__ */ new Set();
  retryTimer;
  failures = 0;
  /** The user's status, `undefined` when unknown (not watched, or disconnected). */
  get(user) {
    return this.status.get(user);
  }
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  /** Watches users (kept across reconnects); resolves once the snapshot is in, when connected. */
  async watch(users) {
    const fresh = users.filter((u) => !this.users.has(u));
    for (const u of fresh) this.users.add(u);
    if (fresh.length && this.host.connected()) await this.subscribeUsers(fresh);
  }
  /** Watches a group's members (protocol 2), across reconnects. */
  async watchGroup(conversationId) {
    this.groups.add(conversationId);
    if (this.host.connected()) await this.apply(this.host.request({ type: "presence_subscribe", conversation_id: conversationId }));
  }
  unwatch(users) {
    const gone = users.filter((u) => this.users.delete(u));
    for (const u of gone) this.set(u, void 0);
    for (let i = 0; i < gone.length; i += CHUNK) this.host.write({ type: "presence_unsubscribe", users: gone.slice(i, i + CHUNK) });
  }
  /** After `welcome`: the new connection watches nobody yet. */
  welcome() {
    void this.restore();
  }
  disconnected() {
    clearTimeout(this.retryTimer);
    this.retryTimer = void 0;
    for (const user of [...this.status.keys()]) this.set(user, void 0);
  }
  presence(user, status) {
    if (this.users.has(user) || this.groups.size) this.set(user, status);
  }
  async restore() {
    try {
      if (this.users.size) await this.subscribeUsers([...this.users]);
      for (const group of this.groups) await this.apply(this.host.request({ type: "presence_subscribe", conversation_id: group }));
      this.failures = 0;
    } catch (error) {
      if (error instanceof ClientError && error.code !== "timeout") return;
      if (error instanceof ServerError && !error.retryable) {
        this.host.warn(`presence_subscribe refused: ${error.message}`);
        return;
      }
      this.failures += 1;
      this.retryTimer = setTimeout(() => void this.restore(), backoffDelay(this.failures, this.backoff));
    }
  }
  async subscribeUsers(users) {
    for (let i = 0; i < users.length; i += CHUNK) {
      await this.apply(this.host.request({ type: "presence_subscribe", users: users.slice(i, i + CHUNK) }));
    }
  }
  async apply(reply) {
    const snapshot = await reply;
    for (const [user, status] of Object.entries(snapshot.users)) this.set(user, status);
  }
  set(user, status) {
    if (this.status.get(user) === status) return;
    if (status === void 0) this.status.delete(user);
    else this.status.set(user, status);
    for (const listener of [...this.listeners]) listener(user, status);
  }
};

// src/store.ts
var MemoryStore = class {
  lastSeq = 0;
  sends = /* @__PURE__ */ new Map();
  async getLastSeq() {
    return this.lastSeq;
  }
  async setLastSeq(seq) {
    this.lastSeq = seq;
  }
  async pendingSends() {
    return [...this.sends.values()].map((send) => ({ ...send }));
  }
  async putSend(send) {
    this.sends.set(send.clientMsgId, { ...send });
  }
  async deleteSend(clientMsgId) {
    this.sends.delete(clientMsgId);
  }
};

// src/stream.ts
var PAGE = 500;
var SyncEngine = class {
  constructor(store, host, backoff) {
    this.store = store;
    this.host = host;
    this.backoff = backoff;
    this.loaded = store.getLastSeq().then((seq) => {
      this.lastSeq = Math.max(this.lastSeq, seq);
      this.saved = seq;
    });
  }
  store;
  host;
  backoff;
  /** Every seq up to this one has been applied (or does not exist for this connection). */
  lastSeq = 0;
  /** Entries past a gap, waiting for it to be filled. */
  ahead = /* @__PURE__ */ new Map();
  syncing = false;
  wanted = false;
  failures = 0;
  retryTimer;
  idleWaiters = [];
  saving = Promise.resolve();
  saved = 0;
  loaded;
  /** After `welcome`: sync when the user's stream is past what was applied. */
  welcome(lastSeq) {
    if (lastSeq < this.lastSeq) {
      this.host.warn(`the server's last_seq ${lastSeq} is behind this client's ${this.lastSeq}: a store of another user, or a server that lost data`);
    }
    if (lastSeq > this.lastSeq || this.ahead.size) this.want();
    else this.notifyIdle();
  }
  hint(lastSeq) {
    if (lastSeq > this.lastSeq) this.want();
  }
  disconnected() {
    clearTimeout(this.retryTimer);
    this.retryTimer = void 0;
  }
  /** A live entry (or the ack of an own send). */
  offer(entry) {
    if (entry.seq <= this.lastSeq || this.ahead.has(entry.seq)) return;
    if (entry.seq === this.lastSeq + 1) {
      this.deliver([entry]);
      return;
    }
    this.ahead.set(entry.seq, entry);
    this.want();
  }
  /** Resolves when no sync is wanted or running (after the cycle in progress, if any). */
  idle() {
    if (!this.syncing && !this.wanted) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
  /** Syncs now (for example after a long sleep), and resolves when it is done. */
  sync() {
    this.want();
    return this.idle();
  }
  want() {
    this.wanted = true;
    if (!this.syncing && this.retryTimer === void 0) void this.cycle();
  }
  async cycle() {
    this.syncing = true;
    try {
      while (this.wanted) {
        this.wanted = false;
        let after = this.lastSeq;
        for (; ; ) {
          const page = await this.host.request({ type: "sync", after_seq: after, limit: PAGE });
          const next = this.page(page, after);
          if (!page.has_more || next === after) break;
          after = next;
        }
      }
      this.failures = 0;
      this.syncing = false;
      this.notifyIdle();
    } catch (error) {
      this.syncing = false;
      this.wanted = true;
      if (error instanceof ClientError && (error.code === "disconnected" || error.code === "not_connected" || error.code === "closed")) return;
      this.host.warn(`sync failed: ${String(error)}`);
      this.failures += 1;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = void 0;
        if (this.wanted) void this.cycle();
      }, backoffDelay(this.failures, this.backoff));
    }
  }
  /** Applies one page; returns where the next starts. */
  page(page, after) {
    const entries = [
      ...page.messages.map((message) => ({ kind: "message", seq: message.seq, message, asOf: page.last_seq })),
      ...(page.events ?? []).map((event) => ({ kind: "event", seq: event.seq, event }))
    ].sort((a, b) => a.seq - b.seq);
    const fresh = entries.filter((e) => e.seq > this.lastSeq);
    const end = Math.max(after, entries.length ? entries[entries.length - 1].seq : after);
    const through = page.has_more ? end : Math.max(end, page.last_seq);
    this.deliver(fresh, through);
    return end;
  }
  deliver(entries, through = 0) {
    const out = [...entries];
    if (entries.length) this.lastSeq = Math.max(this.lastSeq, entries[entries.length - 1].seq);
    if (through > this.lastSeq) this.lastSeq = through;
    for (const seq of this.ahead.keys()) if (seq <= this.lastSeq) this.ahead.delete(seq);
    for (let next = this.ahead.get(this.lastSeq + 1); next; next = this.ahead.get(this.lastSeq + 1)) {
      this.ahead.delete(next.seq);
      out.push(next);
      this.lastSeq = next.seq;
    }
    if (out.length) this.host.apply(out);
    this.save();
  }
  save() {
    const seq = this.lastSeq;
    if (seq === this.saved) return;
    this.saved = seq;
    this.saving = this.saving.then(() => this.store.setLastSeq(seq)).catch((error) => this.host.warn(`cannot keep last_seq: ${String(error)}`));
  }
  notifyIdle() {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
};

// src/typing.ts
var Typing = class {
  constructor(write, changed, options) {
    this.write = write;
    this.changed = changed;
    this.options = options;
  }
  write;
  changed;
  options;
  lastSent = /* @__PURE__ */ new Map();
  /** conversation id → user → timer that ends the indicator. */
  shown = /* @__PURE__ */ new Map();
  /** Tells `to` (a user or a conversation) that the user is typing; false when throttled or offline. */
  send(to, command) {
    const now = Date.now();
    if (now - (this.lastSent.get(to) ?? -Infinity) < this.options.sendEveryMs) return false;
    if (!this.write(command)) return false;
    this.lastSent.set(to, now);
    return true;
  }
  /** Someone is typing in `conversationId`. */
  received(conversationId, user) {
    let users = this.shown.get(conversationId);
    if (!users) this.shown.set(conversationId, users = /* @__PURE__ */ new Map());
    clearTimeout(users.get(user));
    const known = users.has(user);
    users.set(user, setTimeout(() => this.stopped(conversationId, user), this.options.showForMs));
    if (!known) this.changed(conversationId, [...users.keys()]);
  }
  /** `user`'s message arrived: they stopped typing it. */
  stopped(conversationId, user) {
    const users = this.shown.get(conversationId);
    if (!users?.has(user)) return;
    clearTimeout(users.get(user));
    users.delete(user);
    this.changed(conversationId, [...users.keys()]);
  }
  clear() {
    for (const [conversationId, users] of this.shown) {
      for (const timer of users.values()) clearTimeout(timer);
      this.changed(conversationId, []);
    }
    this.shown.clear();
    this.lastSent.clear();
  }
};

// src/client.ts
function directConversationId(a, b) {
  return a < b ? `${a}:${b}` : `${b}:${a}`;
}
var HistoryPager = class {
  constructor(client, conversationId, limit) {
    this.client = client;
    this.conversationId = conversationId;
    this.limit = limit;
  }
  client;
  conversationId;
  limit;
  before;
  /** No older messages are left. */
  done = false;
  /** The next older page, oldest first within the page (empty once `done`). */
  async next() {
    if (this.done) return [];
    const page = this.before ? { before: this.before } : {};
    const command = this.client.protocol === 1 ? { type: "history", with: this.client.peerOf(this.conversationId), limit: this.limit, ...page } : { type: "history", conversation_id: this.conversationId, limit: this.limit, ...page };
    const reply = await this.client.request(command);
    this.before = reply.next_before;
    this.done = reply.next_before === null;
    this.client.conversations.history(reply.conversation_id, reply.messages, reply.last_seq ?? void 0);
    return reply.messages;
  }
};
var PeroxoClient = class {
  /** The local conversation store, kept up to date from the stream. */
  conversations = new ConversationStore();
  presence;
  /** Resolves once the store's outbox and position are loaded and the first connection starts. */
  ready;
  connection;
  outbox;
  stream;
  typingState;
  listeners = {
    entry: /* @__PURE__ */ new Set(),
    ack: /* @__PURE__ */ new Set(),
    sendFailed: /* @__PURE__ */ new Set(),
    state: /* @__PURE__ */ new Set(),
    warning: /* @__PURE__ */ new Set()
  };
  me;
  welcomeProtocol;
  constructor(options) {
    const store = options.store ?? new MemoryStore();
    const backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.welcomeProtocol = options.protocol ?? 3;
    const warn = (message) => this.emit("warning", message);
    this.connection = new Connection({ ...options, onWarning: (m) => {
      options.onWarning?.(m);
      warn(m);
    } }, {
      welcome: (welcome) => this.welcome(welcome),
      frame: (frame) => this.frame(frame),
      down: () => this.down()
    });
    this.connection.subscribe((state) => this.emit("state", state));
    const connected = () => this.connection.connected;
    const request = (command) => this.connection.request(command);
    const write = (command) => this.connection.write(command);
    this.outbox = new Outbox(store, {
      write,
      connected,
      acked: (send, ack) => this.acked(send, ack),
      failed: (send, error) => this.emit("sendFailed", send, error)
    }, backoff);
    this.stream = new SyncEngine(store, {
      request,
      warn,
      apply: (entries) => this.apply(entries)
    }, backoff);
    this.presence = new Presence({ request, write, connected, warn }, backoff);
    this.typingState = new Typing(
      write,
      (id, users) => this.conversations.setTyping(id, users),
      { sendEveryMs: 3e3, showForMs: 6e3, ...options.typing }
    );
    this.ready = Promise.all([this.outbox.loaded, this.stream.loaded]).then(() => this.connection.start());
  }
  get state() {
    return this.connection.state;
  }
  /** The user, from the last `welcome`. */
  get user() {
    return this.me;
  }
  /** The protocol version of the current (or last) connection. */
  get protocol() {
    return this.welcomeProtocol;
  }
  /** Every seq of the user's stream up to this one has been applied. */
  get lastSeq() {
    return this.stream.lastSeq;
  }
  on(event, listener) {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }
  /** Resolves when connected (at once if it is). */
  whenConnected() {
    if (this.connection.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const off = this.on("state", (state) => {
        if (state.status === "connected") {
          off();
          resolve();
        }
        if (state.status === "closed") {
          off();
          reject(new ClientError("closed", state.message));
        }
      });
    });
  }
  /**
   * Sends `text` to a user or a conversation (`alice:bob`, a group id), resolving with the ack
   * (also when it is a `duplicate`). The send is kept in the store until acked and resent with
   * the same `client_msg_id` after reconnects and retryable errors; it rejects with a
   * {@link ServerError} when refused for good (`bad_request`, `too_large`, `not_a_member`, …).
   */
  send(to, text, options = {}) {
    const { clientMsgId, replyTo } = options;
    if (replyTo && !isConversationId(to)) {
      if (this.me === void 0) return Promise.reject(new ClientError("not_connected", "a reply to a user needs its conversation id before the first welcome"));
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
  edit(conversationId, messageId, text, options = {}) {
    const clientMsgId = options.clientMsgId ?? newClientMsgId();
    return this.changeMessage({ type: "edit", conversation_id: conversationId, message_id: messageId, text, client_msg_id: clientMsgId });
  }
  /**
   * Protocol 3: deletes a message for everyone (the user's own, or any in a group the user
   * owns or administers), leaving a tombstone. Deleting a deleted message changes nothing,
   * so it is retried like {@link edit}.
   */
  delete(conversationId, messageId) {
    return this.changeMessage({ type: "delete", conversation_id: conversationId, message_id: messageId });
  }
  /** Protocol 3: adds the user's reaction `emoji` to a message (again: no change). */
  react(conversationId, messageId, emoji) {
    return this.changeMessage({ type: "react", conversation_id: conversationId, message_id: messageId, emoji });
  }
  /** Protocol 3: takes the user's reaction `emoji` back (one never made: no change). */
  unreact(conversationId, messageId, emoji) {
    return this.changeMessage({ type: "unreact", conversation_id: conversationId, message_id: messageId, emoji });
  }
  /** The sends not acked yet, oldest first. */
  pendingSends() {
    return this.outbox.pending();
  }
  /** Syncs the stream now and resolves when it has caught up. */
  sync() {
    return this.stream.sync();
  }
  /** A pager over a conversation's history (by conversation id, or a user for a direct one). */
  history(conversationOrUser, options = {}) {
    const id = isConversationId(conversationOrUser) ? conversationOrUser : directConversationId(this.me ?? "", conversationOrUser);
    return new HistoryPager(this, id, options.limit ?? 50);
  }
  /** Loads a page of the conversation list (protocol 2) into {@link conversations}. */
  async loadConversations(options = {}) {
    const reply = await this.request({ type: "conversations", limit: options.limit ?? 50, ...options.before ? { before: options.before } : {} });
    this.conversations.summaries(reply.conversations, reply.last_seq ?? void 0);
    return reply;
  }
  /** Loads a group's members into {@link conversations}. */
  async loadMembers(conversationId) {
    const reply = await this.request({ type: "members", conversation_id: conversationId });
    this.conversations.members(conversationId, reply.members);
    return reply;
  }
  /**
   * Tells a user or a conversation that the user is typing, at most once per
   * `typing.sendEveryMs`; false when throttled or disconnected.
   */
  typing(to) {
    const command = isConversationId(to) ? this.protocol === 1 ? { type: "typing", to: this.peerOf(to) } : { type: "typing", conversation_id: to } : { type: "typing", to };
    return this.typingState.send(to, command);
  }
  /** Creates a group; retried with the same `client_msg_id` until it is answered. */
  async createGroup(title, members = [], clientMsgId = newClientMsgId()) {
    return this.retrying(() => this.request({ type: "create_group", title, members, client_msg_id: clientMsgId }));
  }
  async markRead(conversationId, messageId) {
    const reply = await this.request({ type: "mark_read", conversation_id: conversationId, message_id: messageId });
    this.conversations.readState(conversationId, reply.read_marker, reply.unread_count);
    return reply;
  }
  async markUnread(conversationId, messageId) {
    const reply = await this.request({ type: "mark_unread", conversation_id: conversationId, ...messageId ? { message_id: messageId } : {} });
    this.conversations.readState(conversationId, reply.read_marker, reply.unread_count);
    return reply;
  }
  /**
   * Any command, answered by its reply frame (typed by the reply's `type`): `rename_group`,
   * `add_members`, `read_receipts`, `online_users`, … Rejects with the server's error
   * ({@link ServerError}), or a {@link ClientError} when disconnected.
   */
  request(command) {
    return this.connection.request(command);
  }
  reconnectNow() {
    this.connection.reconnectNow();
  }
  /** Closes for good. Unacked sends stay in the store for the next client of it. */
  close() {
    this.connection.close();
  }
  /** The other user of a direct conversation id. */
  peerOf(conversationId) {
    const [a, b] = conversationId.split(":");
    return a === this.me ? b : a;
  }
  emit(event, ...args) {
    for (const listener of [...this.listeners[event]]) listener(...args);
  }
  /** An idempotent change to a message, retried until answered; its answer goes into the store. */
  async changeMessage(command) {
    const reply = await this.retrying(() => this.request(command));
    this.conversations.messageState(reply.message, reply.seq ?? void 0);
    return reply;
  }
  async retrying(attempt) {
    for (let failures = 0; ; failures++) {
      try {
        await this.whenConnected();
        return await attempt();
      } catch (error) {
        const again = error instanceof ServerError && error.retryable || error instanceof ClientError && error.code !== "closed" && error.code !== "frame_too_large";
        if (!again || failures >= 8) throw error;
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(failures)));
      }
    }
  }
  welcome(welcome) {
    this.me = welcome.user;
    this.welcomeProtocol = welcome.protocol;
    this.conversations.me = welcome.user;
    this.outbox.writeAll();
    this.stream.welcome(welcome.last_seq);
    this.presence.welcome();
  }
  down() {
    this.outbox.disconnected();
    this.stream.disconnected();
    this.presence.disconnected();
    this.typingState.clear();
  }
  frame(frame) {
    switch (frame.type) {
      case "ack":
        this.outbox.ack(frame);
        return;
      case "message": {
        const { type: _type, ...message } = frame;
        this.outbox.committed(message);
        this.typingState.stopped(message.conversation_id, message.from);
        this.stream.offer({ kind: "message", seq: message.seq, message });
        return;
      }
      case "event": {
        const { type: _type, ...event } = frame;
        this.stream.offer({ kind: "event", seq: event.seq, event });
        return;
      }
      case "sync_hint":
        this.stream.hint(frame.last_seq);
        return;
      case "presence":
        this.presence.presence(frame.user, frame.status);
        return;
      case "typing":
        this.typingState.received(frame.conversation_id ?? directConversationId(this.me ?? "", frame.from), frame.from);
        return;
      case "receipt":
        this.conversations.receipt(frame.conversation_id, frame.user, frame.message_id);
        return;
      case "error":
        if (!this.outbox.error(frame)) this.emit("warning", `error from the server: ${frame.code}: ${frame.message}`);
        return;
      default:
        return;
    }
  }
  /** A committed send becomes the user's own message in the stream. */
  acked(send, ack) {
    this.emit("ack", ack, send);
    const me = this.me ?? "";
    const to = ack.conversationId.startsWith("g~") ? ack.conversationId : isConversationId(send.to) ? this.peerOf(send.to) : send.to;
    let replyTo;
    if (send.replyTo) {
      replyTo = this.conversations.quoteOf(ack.conversationId, send.replyTo);
      if (!replyTo) {
        this.stream.hint(ack.seq);
        return;
      }
    }
    const message = {
      message_id: ack.messageId,
      conversation_id: ack.conversationId,
      from: me,
      to,
      text: send.text,
      ts: ack.ts,
      seq: ack.seq,
      client_msg_id: ack.clientMsgId,
      ...replyTo ? { reply_to: replyTo } : {}
    };
    if (!ack.duplicate) this.stream.offer({ kind: "message", seq: ack.seq, message });
  }
  apply(entries) {
    this.conversations.apply(entries);
    for (const entry of entries) {
      if (entry.kind === "message") this.outbox.committed(entry.message);
      this.emit("entry", entry);
    }
  }
};
function connect(options) {
  return new PeroxoClient(options);
}

// src/indexeddb.ts
var SENDS = "sends";
var META = "meta";
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}
var IndexedDbStore = class {
  db;
  /**
   * @param name the database's name: one per user, for example `peroxo:default:alice`.
   * @param factory `indexedDB` by default.
   */
  constructor(name, factory = globalThis.indexedDB) {
    const open = factory.open(name, 1);
    open.onupgradeneeded = () => {
      open.result.createObjectStore(SENDS, { keyPath: "clientMsgId" });
      open.result.createObjectStore(META);
    };
    this.db = done(open);
  }
  async run(store, mode, action) {
    const tx = (await this.db).transaction(store, mode);
    const result = done(action(tx.objectStore(store)));
    result.catch(() => void 0);
    await new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
    return result;
  }
  async getLastSeq() {
    const value = await this.run(META, "readonly", (s) => s.get("last_seq"));
    return typeof value === "number" ? value : 0;
  }
  async setLastSeq(seq) {
    await this.run(META, "readwrite", (s) => s.put(seq, "last_seq"));
  }
  pendingSends() {
    return this.run(SENDS, "readonly", (s) => s.getAll());
  }
  async putSend(send) {
    await this.run(SENDS, "readwrite", (s) => s.put(send));
  }
  async deleteSend(clientMsgId) {
    await this.run(SENDS, "readwrite", (s) => s.delete(clientMsgId));
  }
  /** Closes the database. */
  async close() {
    (await this.db).close();
  }
};
export {
  ClientError,
  ConversationStore,
  HistoryPager,
  IndexedDbStore,
  MemoryStore,
  PeroxoClient,
  QUOTE_EXCERPT_CHARS,
  ServerError,
  backoffDelay,
  compareIds,
  connect,
  directConversationId,
  newClientMsgId,
  nextStepAfterClose,
  nextStepAfterRefusal,
  quoteExcerpt
};
