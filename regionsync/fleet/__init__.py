"""The fleet: ``regionsync worker`` replicas sharing the accounts through procrastinate, a
task queue in PostgreSQL (docs/fleet.md)."""
