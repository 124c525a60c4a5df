"""The ``regionsync`` program: parse the options, set up logging, read the settings, run one
command, and turn its errors into one message and an exit code.

Exit codes: 0 success (or skipped: another sync holds the lock), 1 the sync failed,
2 bad configuration or usage. Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from regionsync import logs
from regionsync.cli import terminal
from regionsync.cli.commands import EXIT_FAILED, EXIT_USAGE, Handler
from regionsync.cli.parser import build_parser
from regionsync.errors import RegionSyncError
from regionsync.settings import Settings, environment_warnings, logging_hints, read_env_file


def main(argv: Sequence[str] | None = None) -> int:
    # Safe logging first, before anything can fail: no locals, secrets scrubbed.
    fmt, secrets = logging_hints(os.environ)
    logs.configure(fmt=fmt, secrets=secrets)
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        # Inside the boundary: an option's parser that fails unexpectedly is one line too.
        args = build_parser(fake_api="fake-api" in arguments).parse_args(arguments)
        if args.quiet and args.verbose:
            print("regionsync: error: -q and -v cannot be used together", file=sys.stderr)
            return EXIT_USAGE
        env = load_environment(args.env_file)
        fmt, secrets = logging_hints(env)
        logs.configure(fmt=fmt, secrets=secrets)
        settings = Settings.from_env(env)
        secrets = (*secrets, *settings.secrets)
        logs.configure(level=_log_level(args, settings), fmt=settings.log_format, secrets=secrets)
        for warning in environment_warnings(env):
            structlog.get_logger("regionsync").warning(**warning)
        handler: Handler = args.handler
        return handler(args, settings)
    except RegionSyncError as error:
        message = terminal.clean(logs.redact(str(error), secrets), limit=None)
        print(f"regionsync: error: {message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("regionsync: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`regionsync regions | head`): no error of ours to report.
        # Python's documented recipe: point stdout at devnull so the exit's flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as error:  # noqa: BLE001 - a bug still gets one line and exit 1
        # CRITICAL: the traceback the line below points to is logged even under -q.
        structlog.get_logger("regionsync").critical("internal_error", exc_info=True)
        message = logs.redact(f"{type(error).__name__}: {error}", secrets)
        print(f"regionsync: internal error: {message} (details in the log)", file=sys.stderr)
        return EXIT_FAILED


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """``-v`` adds DEBUG; else the setting. ``-q`` leaves a command its result line, or its
    error line, alone (cron mails the output): no log lines but a bug's. The daemon has no
    result line, so under ``-q`` it logs its warnings and errors."""
    if args.quiet:
        return "WARNING" if args.command == "daemon" else "CRITICAL"
    if args.verbose:
        return "DEBUG"
    return settings.log_level


def load_environment(env_file: Path | None) -> dict[str, str]:
    """The environment, on top of an optional ``.env`` file."""
    env: dict[str, str] = {}
    if env_file is not None:
        env.update(read_env_file(env_file))
    env.update(os.environ)
    return env


__all__ = ["main"]
