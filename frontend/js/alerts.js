// AlertBook: the page's alerts over the hub socket (README "Alerts"). It keeps an owner key
// in localStorage (the only credential of this browser's alerts), asks for the VAPID key
// and a push subscription when the first alert is made, creates "price crosses level"
// alerts (`alert`), lists them (`alerts`), deletes them (`alert_delete`), and re-reads the
// list after each change and after every reconnect. Events: "change" (the list) and
// "notification" (a {message, alert_id} the server sent this socket).

import { pushSubscription } from "./push.js";

const OWNER_KEY = "candlewire.alert-owner";

function newOwner() {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

export function ownerKey(storage = window.localStorage) {
  let owner = storage.getItem(OWNER_KEY);
  if (!owner) {
    owner = newOwner();
    storage.setItem(OWNER_KEY, owner);
  }
  return owner;
}

/** The rule of a "close crosses `level`" alert on one series (the rule engine's shape). */
export function crossRule(source, name, interval, level) {
  return {
    type1: "data", source1: source, name1: name, interval1: interval, key1: "close",
    comparator: "crosses", type2: "value", value2: String(level),
  };
}

/** The level and series of an alert made by crossRule, or null for any other alert. */
export function crossLevel(alert) {
  const rule = alert.rules?.length === 1 ? alert.rules[0] : null;
  if (!rule || rule.type1 !== "data" || rule.type2 !== "value") return null;
  const level = Number(rule.value2);
  if (!Number.isFinite(level)) return null;
  return { source: rule.source1, name: rule.name1, interval: rule.interval1, level };
}

export class AlertBook extends EventTarget {
  constructor(connection) {
    super();
    this.connection = connection;
    this.owner = ownerKey();
    this.items = [];
    this.vapidKey = null;
    this.vapidAsked = false;
    this.keyWaiters = [];
    this.subscription = undefined; // undefined: not tried yet; null: no push
    this.asking = undefined; // the promise of the subscription, once asked for
    connection.addEventListener("open", () => this.refresh());
    connection.addEventListener("message", (e) => this.onMessage(e.detail));
  }

  refresh() {
    this.connection.send([{ type: "alerts", owner: this.owner }]);
  }

  /** The server's VAPID public key (null when disconnected or not answered in time). */
  publicKey() {
    if (this.vapidKey) return Promise.resolve(this.vapidKey);
    return new Promise((resolve) => {
      if (!this.connection.send([{ type: "vapid_public_key" }])) {
        resolve(null);
        return;
      }
      this.vapidAsked = true;
      this.keyWaiters.push(resolve);
      setTimeout(() => resolve(null), 5000);
    });
  }

  /**
   * This browser's push subscription, asked for once (null without push). Alerts added
   * while it is being asked for wait for that one request, so they are created in the order
   * they were added (each asked on its own, and the answers came in any order).
   */
  push() {
    if (this.asking === undefined) {
      this.asking = this.publicKey()
        .then((key) => pushSubscription(key))
        .then((subscription) => {
          this.subscription = subscription;
          return subscription;
        });
    }
    return this.asking;
  }

  /** Create an alert "close of `name` crosses `level`"; false when disconnected. */
  async create({ source, name, interval, label, level }) {
    const subscription = await this.push();
    return this.connection.send([{
      type: "alert",
      message: `${label} crosses ${level}`,
      rules: [crossRule(source, name, interval, level)],
      operators: [],
      indicators: {},
      subscription,
      owner: this.owner,
    }]);
  }

  remove(id) {
    return this.connection.send([{ type: "alert_delete", id, owner: this.owner }]);
  }

  onMessage(message) {
    switch (message.type) {
      case "vapid_public_key":
        this.vapidKey = message.vapid_public_key?.publicKey || null;
        for (const resolve of this.keyWaiters.splice(0)) resolve(this.vapidKey);
        break;
      case "alerts":
        this.items = Array.isArray(message.alerts) ? message.alerts : [];
        this.dispatchEvent(new Event("change"));
        break;
      case "alert_created":
      case "alert_deleted":
        this.refresh();
        break;
      case "notification":
        this.dispatchEvent(new CustomEvent("notification", { detail: message }));
        if (message.alert_id !== undefined) this.refresh(); // its armed/fired state moved
        break;
      default:
        break;
    }
  }
}
