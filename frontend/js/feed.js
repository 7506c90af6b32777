// Feed: the hub protocol over one Connection, shared by every chart and the watchlist.
// Consumers subscribe to a series key (source, name, interval); the feed sends `data`,
// routes data_init / data_update / error to the consumers of that key and each
// data_history to the consumer that asked for it (two charts may show one key: the hub
// answers the requests about one key in their order, so the feed keeps them in a queue),
// unsubscribes when the last consumer leaves, and re-sends every subscription after a
// reconnect (the hub answers with the latest bars, which the consumers merge, or show
// instead of theirs when they do not continue them).
// It also carries the indicator messages: search_indicators (replies in request order, like
// search_data) and indicator / indicator_history, whose replies (indicator_init,
// indicator_update, indicator_history, and errors about them) go to the consumer registered
// under the request's chart id. Indicators are not re-sent here after a reconnect: their
// owner asks again once its series' data_init came back (it needs the bars' range).

export function seriesKey(source, name, interval) {
  return `${source}\u0000${name}\u0000${interval}`;
}

const MAX_PER_FRAME = 50; // below the hub's MAX_REQUESTS_PER_FRAME

export class Feed extends EventTarget {
  constructor(connection) {
    super();
    this.connection = connection;
    this.subs = new Map(); // key -> {source, name, interval, count, consumers: Set}
    this.searches = []; // FIFO of pending search callbacks (replies come in request order)
    this.indicatorSearches = []; // the same for search_indicators
    this.indicators = new Map(); // chart id -> {onInit, onUpdate, onHistory, onError}
    this.histories = new Map(); // key -> queue of the pending data_history requests
    this.queuedSearch = null; // a search asked for while disconnected
    this.lastError = null;
    this.outgoing = []; // requests of this task, sent together in one frame
    connection.addEventListener("open", () => this.onOpen());
    connection.addEventListener("close", () => this.onClose());
    connection.addEventListener("message", (e) => this.onMessage(e.detail));
  }

  /** Subscribe `consumer` ({onInit, onUpdate, onHistory, onError, onLost}) to a key. */
  subscribe(source, name, interval, consumer, count = 300) {
    const key = seriesKey(source, name, interval);
    let sub = this.subs.get(key);
    if (!sub) {
      sub = { source, name, interval, count, consumers: new Set() };
      this.subs.set(key, sub);
    }
    sub.count = Math.max(sub.count, count);
    sub.consumers.add(consumer);
    this.enqueue({ type: "data", source, name, interval, count });
  }

  // Requests made in one task (e.g. four charts opening) go out as one frame: the hub
  // answers the `data` requests of a frame concurrently, but one frame after another.
  enqueue(request) {
    if (!this.connection.isOpen) return; // sent again on open
    this.outgoing.push(request);
    if (this.outgoing.length === 1) queueMicrotask(() => this.flush());
  }

  flush() {
    const requests = this.outgoing.splice(0);
    for (let i = 0; i < requests.length; i += MAX_PER_FRAME) {
      this.connection.send(requests.slice(i, i + MAX_PER_FRAME));
    }
  }

  unsubscribe(source, name, interval, consumer) {
    const key = seriesKey(source, name, interval);
    const sub = this.subs.get(key);
    if (!sub) return;
    sub.consumers.delete(consumer);
    if (sub.consumers.size > 0) return;
    this.subs.delete(key);
    this.enqueue({ type: "unsubscribe", source, name, interval });
  }

  /**
   * Ask for older bars for `consumer`: its onHistory(message, request) gets the reply with
   * the request returned here. Null when disconnected (the caller retries after the
   * resubscribe).
   */
  history(source, name, interval, end, count, consumer) {
    const request = { type: "data_history", source, name, interval, end, count };
    if (!this.connection.send([request])) return null;
    const key = seriesKey(source, name, interval);
    if (!this.histories.has(key)) this.histories.set(key, []);
    this.histories.get(key).push({ request, consumer });
    return request;
  }

  /** The consumer whose request `message` (a data_history) answers, and that request. */
  historyAsker(message) {
    const key = seriesKey(message.source, message.name, message.interval);
    const queue = this.histories.get(key);
    const asked = queue?.shift();
    if (queue && !queue.length) this.histories.delete(key);
    // A consumer that left the key since (a chart that changed symbol) gets nothing.
    return asked && this.subs.get(key)?.consumers.has(asked.consumer) ? asked : null;
  }

  /** Whether requests go out now (else searches wait for the reconnect). */
  get connected() {
    return this.connection.isOpen;
  }

  /**
   * Search the symbol database; resolves with the result rows. While disconnected the
   * latest search waits for the reconnect (one it replaces resolves with null at once).
   */
  search(text) {
    return new Promise((resolve) => {
      if (this.connection.send([{ type: "search_data", search: text }])) {
        this.searches.push(resolve);
      } else {
        if (this.queuedSearch) this.queuedSearch.resolve(null);
        this.queuedSearch = { text, resolve };
      }
    });
  }

  /** Search the indicator catalogue; resolves with its rows (null when disconnected). */
  searchIndicators(text) {
    return new Promise((resolve) => {
      if (this.connection.send([{ type: "search_indicators", search: text }])) {
        this.indicatorSearches.push(resolve);
      } else {
        resolve(null);
      }
    });
  }

  /** Ask for an indicator (`request.id` is its chart id); replies go to `consumer`. */
  indicator(request, consumer) {
    this.indicators.set(request.id, consumer);
    this.enqueue(request);
  }

  /** Stop routing replies of chart id `id` (the hub stops it when its series is left). */
  dropIndicator(id) {
    this.indicators.delete(id);
  }

  onOpen() {
    for (const s of this.subs.values()) {
      this.enqueue({
        type: "data", source: s.source, name: s.name, interval: s.interval, count: s.count,
      });
    }
    if (this.queuedSearch) {
      const { text, resolve } = this.queuedSearch;
      this.queuedSearch = null;
      this.search(text).then(resolve);
    }
  }

  onClose() {
    this.histories.clear(); // no reply comes any more; the consumers ask again (onLost)
    for (const resolve of this.searches.splice(0)) resolve(null);
    for (const resolve of this.indicatorSearches.splice(0)) resolve(null);
    for (const sub of this.subs.values()) {
      for (const consumer of sub.consumers) consumer.onLost?.();
    }
  }

  consumersOf(message) {
    const sub = this.subs.get(seriesKey(message.source, message.name, message.interval));
    return sub ? [...sub.consumers] : [];
  }

  onMessage(message) {
    switch (message.type) {
      case "data_init":
        for (const c of this.consumersOf(message)) c.onInit?.(message);
        break;
      case "data_update":
        for (const c of this.consumersOf(message)) c.onUpdate?.(message);
        break;
      case "data_history": {
        const asked = this.historyAsker(message);
        asked?.consumer.onHistory?.(message, asked.request);
        break;
      }
      case "search_data_done": {
        const resolve = this.searches.shift();
        if (resolve) resolve(Array.isArray(message.results) ? message.results : []);
        break;
      }
      case "search_indicators_done": {
        const resolve = this.indicatorSearches.shift();
        if (resolve) resolve(Array.isArray(message.results) ? message.results : []);
        break;
      }
      case "indicator_init":
        this.indicators.get(message.id)?.onInit?.(message);
        break;
      case "indicator_update":
        this.indicators.get(message.id)?.onUpdate?.(message);
        break;
      case "indicator_history":
        this.indicators.get(message.id)?.onHistory?.(message);
        break;
      case "error":
        this.onError(message);
        break;
      default:
        break; // pong, unsubscribed, no_data: nothing to do
    }
  }

  onError(message) {
    this.lastError = message;
    const request = message.request;
    // A consumer returns true when it takes the refusal in hand (a chart that reopens a link
    // at the symbol's own spelling or nearest interval, a watchlist row or a compare that
    // shows it): when every consumer of the key did, no toast either.
    let handled = false;
    if (request && typeof request === "object" && !Array.isArray(request) && request.name) {
      const consumers = this.consumersOf(request);
      handled = consumers.length > 0;
      for (const c of consumers) handled = c.onError?.(message) === true && handled;
    }
    if (request && request.type === "search_data") {
      const resolve = this.searches.shift(); // a refused search gets no search_data_done
      if (resolve) resolve([]);
    }
    if (request && typeof request.id === "string" && /^indicator/.test(request.type)) {
      this.indicators.get(request.id)?.onError?.(message);
    }
    // Leaving a key the hub never held (its `data` was refused: unknown symbol or interval,
    // a limit) is answered not_subscribed: bookkeeping, not news for the user (no toast).
    if (message.code === "not_subscribed" && request?.type === "unsubscribe") return;
    if (handled) return;
    this.announce(message);
  }

  /** Tell the page about a server error (a toast); also a refusal a consumer took in hand
   * and could not get round. */
  announce(message) {
    this.dispatchEvent(new CustomEvent("error", { detail: message }));
  }
}
