"""Command line of the supervisor: `supervisor <command>`, also `python -m supervisor`.

Each command lives in its own module, which provides `add_arguments(parser)` and
`main(args) -> int`. Modules import their heavy dependencies inside `main`, so building the
parser stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from supervisor.settings import SettingsError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("supervisor.service", "Run one supervisor instance (HTTP ingest, queue, workers)."),
    "migrate": ("supervisor.migrate", "Apply the database migrations (SQLite or PostgreSQL)."),
    "preflight": ("supervisor.preflight", "Check the rollout preflight list; non-zero on failure."),
    "smoke": ("supervisor.smoke", "Run the staging smoke test against live instances."),
    "execution-stub": ("supervisor.stub", "Run the execution service stub."),
    "configs": ("supervisor.configs_cli", "Add, update, disable, delete, seed or list configs."),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per available command."""
    parser = argparse.ArgumentParser(prog="supervisor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level", default="INFO", help="logging level: DEBUG, INFO, WARNING (default INFO)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the chosen command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.module.main(args)
    except SettingsError as error:
        print(f"supervisor: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
