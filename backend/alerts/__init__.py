"""Alerts (issue 13): rules on live bars that reach people by Web Push, webhook and socket.

``model`` parses and holds an alert, ``evaluate`` applies the spec's edge-trigger semantics,
``store`` keeps alerts and their pending deliveries in SQLite, ``vapid`` the server's push
key pair, ``delivery`` sends pushes and webhook calls with retries, ``dispatch`` schedules
them, ``destinations`` says where they may go. The hub glue is ``backend.hub.alerting``
(with ``alert_sending``, the deliveries, and ``alert_journal``, the writes).
"""
