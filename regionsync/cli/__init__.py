"""The command line: a thin layer that parses options, calls the library and turns its
errors into one message and an exit code (docs/commands.md)."""

from regionsync.cli.program import main

__all__ = ["main"]
