"""Living under systemd: the sd_notify protocol (readiness, watchdog, status) and first boot.

``notify`` speaks the notification protocol itself, a datagram to ``$NOTIFY_SOCKET``, so
the agent needs no libsystemd. ``firstboot`` is the one-shot step that gives a freshly
flashed device its own identity before the agent starts.
"""
