// JSON-RPC 2.0 over one WebSocket, with authentication, subscription and reconnection.
//
// States: "idle" (no credential), "connecting" (first attempt after login),
// "ready" (authenticated and subscribed), "reconnecting" (lost; retrying with
// backoff), "denied" (the credential was refused: back to the login form).
// After every (re)connect the client authenticates again and re-subscribes,
// then tells its listeners, which re-fetch what they show.

export const TOPICS = ["camera_status_update", "recording_status_update", "storage_status_update"];
const CALL_TIMEOUT_MS = 15000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

export class RpcError extends Error {
  constructor(error) {
    super(error.message || "error");
    this.code = error.code;
    this.data = error.data;
  }
}

export function wsUrl(loc = window.location) {
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
}

export class Rpc {
  constructor(url) {
    this.url = url;
    this.token = null;
    this.session = null; // authenticate's result
    this.state = "idle";
    this.attempt = 0;
    this.retryAt = 0;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.timer = null;
    this.restartHintMs = null;
  }

  onNotification(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    return () => this.stateListeners.delete(fn);
  }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state);
  }

  /** Log in: resolves with authenticate's result, rejects with an RpcError or a network Error. */
  login(token) {
    this.token = token;
    this.attempt = 0;
    this.setState("connecting");
    return this.open();
  }

  /** Resume a session kept in sessionStorage: keeps retrying (visible "reconnecting") until it works or is refused. */
  resume(token) {
    this.token = token;
    this.setState("connecting");
    this.open().catch(() => {});
  }

  logout() {
    this.token = null;
    this.session = null;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "logout");
    this.failPending("logged out");
    this.setState("idle");
  }

  open() {
    clearTimeout(this.timer);
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.onmessage = (event) => this.receive(event.data);
      ws.onopen = async () => {
        try {
          this.session = await this.call("authenticate", { auth_token: this.token });
          await this.call("subscribe_events", { topics: TOPICS });
        } catch (error) {
          settled = true;
          if (error instanceof RpcError && error.code === -32001) {
            this.token = null;
            this.setState("denied");
            ws.close(1000, "authentication refused");
          }
          reject(error);
          return;
        }
        settled = true;
        this.attempt = 0;
        this.restartHintMs = null;
        this.setState("ready");
        resolve(this.session);
      };
      ws.onclose = () => {
        if (this.ws !== ws) return; // an old socket (logout, replaced)
        this.ws = null;
        this.failPending("connection lost");
        if (!settled) {
          settled = true;
          reject(new Error("cannot reach the service"));
        }
        if (this.token && this.state !== "denied") this.scheduleReconnect();
      };
    });
  }

  scheduleReconnect() {
    const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    // Jitter spreads a crowd of consoles reconnecting after a restart.
    let delay = backoff / 2 + Math.random() * (backoff / 2);
    if (this.restartHintMs !== null && this.attempt === 0) delay = this.restartHintMs;
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting");
    this.timer = setTimeout(() => this.open().catch(() => {}), delay);
  }

  /** Try now instead of waiting for the backoff (the banner's "Retry now"). */
  retryNow() {
    if (this.state === "reconnecting" && !this.ws) {
      clearTimeout(this.timer);
      this.open().catch(() => {});
    }
  }

  failPending(reason) {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new Error(reason));
    }
    this.pending.clear();
  }

  receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.method && message.id === undefined) {
      if (message.method === "server_restarting") this.restartHintMs = message.params?.reconnect_after_ms ?? null;
      for (const fn of this.listeners) fn(message.method, message.params || {});
      return;
    }
    const waiting = this.pending.get(message.id);
    if (!waiting) return;
    this.pending.delete(message.id);
    clearTimeout(waiting.timer);
    if (message.error) waiting.reject(new RpcError(message.error));
    else waiting.resolve(message.result);
  }

  call(method, params, timeoutMs = CALL_TIMEOUT_MS) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("not connected"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer in ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      const message = { jsonrpc: "2.0", id, method };
      if (params !== undefined) message.params = params;
      ws.send(JSON.stringify(message));
    });
  }

  /** HTTP headers carrying the credential: a JWT goes as Bearer, anything else as an API key. */
  authHeaders() {
    if (!this.token) return {};
    return this.token.split(".").length === 3
      ? { Authorization: `Bearer ${this.token}` }
      : { "X-API-Key": this.token };
  }
}
