"""The command line: a thin layer that parses options, calls the library and turns its
errors into one message and an exit code (README, *Commands*)."""

from regionsync.cli.commands import entry, main

__all__ = ["entry", "main"]
