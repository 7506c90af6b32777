// The WebSocket to the hub: connect (with the page's access token, kept in localStorage),
// reconnect with backoff, keep alive, report the state. It knows nothing about charts: it
// emits "open", "message" (one parsed server frame) and "state" events; Feed (feed.js)
// decides what to send.

const PING_EVERY_MS = 15000;
const SILENCE_LIMIT_MS = 40000; // a ping unanswered (no frame at all) for this long: reconnect
const OFFLINE_AFTER_FAILURES = 5; // consecutive failed attempts before the badge says offline
const PROBE_MS = 5000; // back online with the socket still open: a frame within this, or reconnect
const REFUSED_AFTER = 2; // sockets in a row that never opened before /health is asked
const PROBE_EVERY = 5; // then every this many, while /health does not answer
// A socket open this long resets the backoff. One closed sooner (a full server's 1013, a
// proxy that accepts then drops) keeps it growing: reset at each open, a full server was
// asked again twice a second for as long as the page stayed open.
const STABLE_MS = 10000;

const TOKEN_KEY = "candlewire.token";

/**
 * The page's access token (AUTH=token or jwt): the `token` of the page's URL, kept in
 * localStorage, else the one kept from before. The address bar loses it with the first
 * rewrite of the URL (url-state.js writes the view only, so a shared link does not carry
 * the key): a reload, a bookmark or another tab of the page then uses the kept one.
 */
export function pageToken(loc = window.location, storage = window.localStorage) {
  // "+" is a plus, as the server reads it: a base64 key (`openssl rand -base64`) pasted
  // into the address bar keeps its "+" (URLSearchParams alone makes each one a space).
  const given = new URLSearchParams(loc.search.replace(/\+/g, "%2B")).get("token");
  try {
    if (given) storage.setItem(TOKEN_KEY, given);
    return given || storage.getItem(TOKEN_KEY);
  } catch {
    return given; // storage refused (private mode): only a token in the URL counts
  }
}

export function hubUrl(loc = window.location) {
  // With AUTH=token or jwt the page is opened as /?token=...: browsers cannot set headers
  // on a WebSocket, so the token goes with the upgrade as a query parameter.
  const token = pageToken(loc);
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  // Relative to the page, so that a page behind a proxy under a path prefix
  // (https://example.com/candlewire/) reaches its socket under that prefix too.
  const url = new URL("websocket/", loc.href);
  return (url.protocol === "https:" ? "wss:" : "ws:") + "//" + url.host + url.pathname + query;
}

export class Connection extends EventTarget {
  constructor(url, { minDelay = 500, maxDelay = 10000 } = {}) {
    super();
    this.url = url;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.delay = minDelay;
    this.openedAt = 0; // when the current socket opened (0: none open)
    this.failures = 0;
    this.unopened = 0; // sockets in a row that never opened
    this.suspect = false; // /health answered after the last of them that was checked
    this.refused = false;
    this.state = "connecting";
    this.ws = null;
    this.retryTimer = null;
    this.retryAt = 0;
    this.lastFrameAt = 0;
    this.pingAt = 0; // when the oldest ping still unanswered (no frame since) was sent
    this.keepalive = null;
    this.probe = null;
    window.addEventListener("online", () => this.onOnline());
    window.addEventListener("offline", () => this.setState("offline"));
    // A tab shown again (a hidden tab's timers may have slept for minutes): check the socket
    // now, as when the network comes back, so that a hung server is not shown as Live over
    // a frozen chart until the keep-alive notices (40 to 55 s later).
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.keepalive !== null) this.onOnline();
    });
    // Likewise a page the browser froze (a background tab, no script ran) and now resumes,
    // visible or not: its socket may have died meanwhile without a word.
    document.addEventListener("resume", () => {
      if (this.keepalive !== null) this.onOnline();
    });
  }

  start() {
    this.open();
    this.keepalive = setInterval(() => this.checkAlive(), PING_EVERY_MS);
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Send a list of requests as one frame; false when the socket is not open. */
  send(requests) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(requests));
    return true;
  }

  open() {
    this.retryTimer = null;
    let ws;
    try {
      ws = new WebSocket(typeof this.url === "function" ? this.url() : this.url);
    } catch (err) {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.unopened = 0;
      this.suspect = false;
      this.refused = false;
      this.openedAt = Date.now();
      this.failures = 0;
      this.lastFrameAt = Date.now();
      this.setState("live");
      this.dispatchEvent(new Event("open"));
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.dispatchEvent(new Event("close"));
      if (!opened) this.checkRefusal();
      this.scheduleRetry();
    };
    ws.onerror = () => {}; // onclose follows and handles it
  }

  /**
   * A socket that never opened: the server down (restarting), the network gone, or the
   * server refusing the upgrade (an access token missing, wrong or expired; the browser
   * does not tell which). The page asks `/health` at the REFUSED_AFTER-th such attempt in a
   * row and every PROBE_EVERY-th after it (each failed ask is a console line while the
   * server is down), and at the attempt after one it answered: when it answered both, the
   * server is up and refuses this page, and the state is "refused", not "reconnecting" or
   * "offline" (attempts go on: a token may be given in another tab).
   */
  checkRefusal() {
    this.unopened += 1;
    const due = this.suspect || this.unopened === REFUSED_AFTER
      || (this.unopened > REFUSED_AFTER && (this.unopened - REFUSED_AFTER) % PROBE_EVERY === 0);
    if (!due) return;
    fetch(new URL("health", window.location.href), { cache: "no-store" })
      .then((r) => r.ok, () => false)
      .then((up) => {
        if (this.isOpen) return;
        this.refused = up && this.suspect;
        this.suspect = up;
        if (this.refused && navigator.onLine) this.setState("refused");
      });
  }

  receive(text) {
    this.lastFrameAt = Date.now();
    // The socket outlived a network drop (the browser said "offline"): frames flow again.
    if (this.state !== "live" && this.ws !== null && this.ws.readyState === WebSocket.OPEN) {
      this.setState("live");
    }
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    for (const message of Array.isArray(frame) ? frame : [frame]) {
      if (message && typeof message.type === "string") {
        this.dispatchEvent(new CustomEvent("message", { detail: message }));
      }
    }
  }

  scheduleRetry() {
    if (this.retryTimer !== null) return;
    if (this.openedAt && Date.now() - this.openedAt >= STABLE_MS) this.delay = this.minDelay;
    this.openedAt = 0;
    this.failures += 1;
    const offline = !navigator.onLine || (this.failures > OFFLINE_AFTER_FAILURES && !this.refused);
    this.setState(offline ? "offline" : this.refused ? "refused" : "reconnecting");
    const wait = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxDelay);
    this.retryAt = Date.now() + wait;
    this.retryTimer = setTimeout(() => this.open(), wait);
  }

  reconnectNow() {
    if (this.isOpen) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.delay = this.minDelay;
    if (this.ws === null) this.open();
  }

  /**
   * The network is back (or the tab is shown again). A socket that closed meanwhile is opened again at once; one that is
   * still open may have outlived the drop (frames flow again: receive() says "live") or be
   * half-open after a network change (no frame: it is dropped and opened again).
   */
  onOnline() {
    if (!this.isOpen) {
      this.reconnectNow();
      return;
    }
    const ws = this.ws;
    const asked = Date.now();
    this.send([{ type: "ping" }]);
    clearTimeout(this.probe);
    this.probe = setTimeout(() => {
      if (this.ws !== ws || this.lastFrameAt >= asked) return;
      this.ws = null;
      ws.close();
      this.dispatchEvent(new Event("close"));
      this.scheduleRetry();
    }, PROBE_MS);
  }

  /**
   * Every PING_EVERY_MS: ping, and drop a socket whose ping went unanswered (no frame at all
   * since) for SILENCE_LIMIT_MS. The silence is counted from the unanswered ping, not from
   * the last frame: a background tab's timers may wake only once a minute (Chrome's
   * intensive throttling), and a quiet series (a market closed) sends nothing between two
   * pings, so "no frame for 40 s" would drop a healthy socket at each wake-up.
   */
  checkAlive() {
    if (!this.isOpen) return;
    const now = Date.now();
    const waiting = this.pingAt > this.lastFrameAt; // the last ping is not answered yet
    if (waiting && now - this.pingAt > SILENCE_LIMIT_MS) {
      // A half-open socket may take minutes to report its close: drop it now.
      const ws = this.ws;
      this.ws = null;
      ws.close();
      this.dispatchEvent(new Event("close"));
      this.scheduleRetry();
      return;
    }
    if (!waiting) this.pingAt = now;
    this.send([{ type: "ping" }]);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}
