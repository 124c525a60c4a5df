"""``regionsync daemon``: the scheduler loop, schedules, health and metrics, and the bounded
HTTP server behind ``/healthz`` and ``/metrics``."""
