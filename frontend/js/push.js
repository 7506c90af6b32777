// Web Push in the browser: register /service-worker.js and get a push subscription for the
// server's VAPID key. Browsers allow this only on HTTPS or on localhost / 127.0.0.1; without
// support, with the permission denied or not granted in time, the answer is null and alerts
// are created without a subscription (they still reach the open page and the webhook).

const READY_TIMEOUT_MS = 5000;

/** The VAPID public key (base64url, padding optional) as the bytes PushManager wants. */
export function keyBytes(base64url) {
  const text = String(base64url).replace(/-/g, "+").replace(/_/g, "/").replace(/=+$/, "");
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

export function pushSupported() {
  return window.isSecureContext && "serviceWorker" in navigator && "PushManager" in window;
}

function withTimeout(promise, ms) {
  return Promise.race([promise, new Promise((resolve) => setTimeout(() => resolve(null), ms))]);
}

/** Register the service worker (once); null where service workers are unavailable. */
export async function registerWorker() {
  if (!pushSupported()) return null;
  try {
    await navigator.serviceWorker.register("service-worker.js", { scope: "./" });
    return await withTimeout(navigator.serviceWorker.ready, READY_TIMEOUT_MS);
  } catch (err) {
    console.warn("service worker not registered:", err?.message || err);
    return null;
  }
}

/** Ask for the notification permission when not decided yet; true when granted. */
async function permitted() {
  if (Notification.permission === "default") {
    await withTimeout(Notification.requestPermission(), READY_TIMEOUT_MS * 6);
  }
  return Notification.permission === "granted";
}

/** The push subscription for `publicKey` as JSON, or null (unsupported, denied, timed out). */
export async function pushSubscription(publicKey) {
  if (!publicKey || !pushSupported() || !(await permitted())) return null;
  const registration = await registerWorker();
  if (!registration) return null;
  try {
    const existing = await registration.pushManager.getSubscription();
    const subscription = existing || await withTimeout(registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: keyBytes(publicKey),
    }), READY_TIMEOUT_MS);
    return subscription ? subscription.toJSON() : null;
  } catch (err) {
    console.warn("no push subscription:", err?.message || err);
    return null;
  }
}
