"""Running it: the daemon (APScheduler wiring, signals), alerts and their notifiers, and
the health and Prometheus metrics server."""
