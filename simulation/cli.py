"""Command line of the model: `python -m simulation <command>`.

Each command lives in a module that provides `add_arguments(parser)` and `main(args) -> int`,
as the supervisor's commands do. Only the chosen command's module is imported, so `run` works
even while another command's module is missing or broken. This module is the `run` command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from simulation.config import (
    LATENCY_KINDS,
    ArrivalConfig,
    ConfigError,
    ExecutionConfig,
    ModelConfig,
)

logger = logging.getLogger(__name__)

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("simulation.cli", "Run the model for one config and print its summary."),
    "sweep": ("simulation.sweep", "Run the model over a grid of configs (pool sizes, loads)."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `python -m simulation run`; each overrides the `--config` file."""
    parser.add_argument("--config", help="model config file (.toml or .json); flags override it")
    parser.add_argument(
        "--arrival-rate", type=float, help="Poisson arrival rate in events per second"
    )
    parser.add_argument(
        "--service", choices=LATENCY_KINDS, help="distribution of one execution call's latency"
    )
    parser.add_argument(
        "--service-mean-ms",
        type=float,
        help="mean call latency in ms; for lognormal the median is set so the mean matches; "
        "not used by empirical",
    )
    parser.add_argument("--service-sigma", type=float, help="sigma of the lognormal latency")
    parser.add_argument("--pool-size", type=int, help="number of workers")
    parser.add_argument("--queue-max", type=int, help="queue capacity (events waiting)")
    parser.add_argument("--duration-s", type=float, help="simulated seconds per replication")
    parser.add_argument(
        "--warmup-s", type=float, help="warm-up seconds removed (default: chosen by MSER-5)"
    )
    parser.add_argument("--replications", type=int, help="independent replications")
    parser.add_argument("--seed", type=int, help="seed of the random streams")
    parser.add_argument("--series-csv", help="write the scrape series of replication 0 here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """Build the config from `--config` and apply the flags that were given."""
    config = ModelConfig.from_file(args.config) if args.config else ModelConfig()

    if args.arrival_rate is not None:
        arrivals = ArrivalConfig(kind="poisson", rate_per_s=args.arrival_rate)
        config = dataclasses.replace(config, arrivals=arrivals)
    config = dataclasses.replace(config, execution=_execution_from_args(config, args))

    top_level = {
        "pool_size": args.pool_size,
        "queue_max": args.queue_max,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "replications": args.replications,
        "seed": args.seed,
    }
    changes = {name: value for name, value in top_level.items() if value is not None}
    return dataclasses.replace(config, **changes)


def _execution_from_args(config: ModelConfig, args: argparse.Namespace) -> ExecutionConfig:
    execution = config.execution
    changes: dict[str, Any] = {}
    if args.service is not None:
        changes["latency"] = args.service
    if args.service_sigma is not None:
        changes["latency_sigma"] = args.service_sigma
    kind = changes.get("latency", execution.latency)
    if args.service_mean_ms is not None:
        if kind == "empirical":
            raise ConfigError(
                "--service-mean-ms does not apply to empirical latency: set "
                "execution.latency_samples_ms in the --config file instead"
            )
        changes["latency_mean_ms"] = args.service_mean_ms
        if kind == "lognormal":
            sigma = float(changes.get("latency_sigma", execution.latency_sigma))
            changes["latency_median_ms"] = args.service_mean_ms * math.exp(-(sigma**2) / 2)
    return dataclasses.replace(execution, **changes)


def _json_ready(summary: dict[str, float]) -> dict[str, float | None]:
    return {key: None if math.isnan(value) else value for key, value in summary.items()}


def _print_table(summary: dict[str, float], config: ModelConfig) -> None:
    from simulation.analysis import SUMMARY_KEYS

    print(
        f"pool size {config.pool_size}, queue capacity {config.queue_max}, "
        f"{config.replications} replication(s) of {config.duration_s:g} s"
    )
    print(f"{'metric':<22}{'value':>14}{'± 95% CI':>14}")
    for key in SUMMARY_KEYS:
        half_width = summary.get(f"{key}_ci95")
        interval = "" if half_width is None else f"{half_width:>14.6g}"
        print(f"{key:<22}{summary[key]:>14.6g}{interval}")


def main(args: argparse.Namespace) -> int:
    """Run the replications the options describe and print the summary."""
    from simulation.model import simulate

    config = config_from_args(args)
    result = simulate(config)
    if args.series_csv:
        result.series(0).to_csv(args.series_csv, index=False)
        logger.info("Wrote the scrape series of replication 0 to %s", args.series_csv)
    if args.json:
        print(json.dumps(_json_ready(result.summary), sort_keys=True))
    else:
        _print_table(result.summary, config)
    return 0


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((item for item in argv if item in COMMANDS), None)


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Build the parser; only `command`'s module is imported and given its options."""
    parser = argparse.ArgumentParser(
        prog="python -m simulation", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="logging level: DEBUG, INFO, WARNING (default WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module: ModuleType = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(module=module)
    return parser


def main_cli(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the chosen command and return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(arguments))
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.module.main(args)
    except ConfigError as error:
        print(f"simulation: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
