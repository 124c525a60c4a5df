from regionsync.cli import entry

raise SystemExit(entry())
