// The page's service worker, served at /service-worker.js (root scope): it shows an alert's
// Web Push as a notification. The server pushes {"notification": {"title": <message>}}
// ("Alert added: …", the alert's message when it fires, "Alert expired: …"); a click on the
// notification focuses an open Candlewire page or opens one.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function titleOf(event) {
  if (!event.data) return "Candlewire alert";
  try {
    const payload = event.data.json();
    return String(payload?.notification?.title || "Candlewire alert");
  } catch {
    return event.data.text() || "Candlewire alert";
  }
}

self.addEventListener("push", (event) => {
  event.waitUntil(self.registration.showNotification(titleOf(event), { tag: undefined }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const open = pages.find((c) => new URL(c.url).origin === self.location.origin);
    if (open) return open.focus();
    return self.clients.openWindow(self.registration.scope);
  })());
});
