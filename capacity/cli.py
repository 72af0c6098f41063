"""The `capacity-plan` command line: options, then the stages of `capacity.plan`.

Errors print one line naming the problem and the fix and exit with 1; invalid options exit with
2 and an interrupt with 130.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capacity.notebooks import NotebookError
from capacity.plan import (
    ASSUMED_BYTES_PER_KEY,
    DATABASE_URL_VARIABLE,
    DEFAULT_BURST_FACTOR,
    DEFAULT_HEADROOM,
    DEFAULT_MAX_DROP_RATE,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_SEED,
    DEFAULT_TARGET_LATENCY_MS,
    REDIS_URL_VARIABLE,
    STAGE_COUNT,
    PlanError,
    PlanOptions,
    bytes_per_key,
    check_services,
    choose_peak_rate,
    run_plan,
)
from capacity.progress import StageProgress
from capacity.scenario import ScenarioError

__all__ = [
    "ASSUMED_BYTES_PER_KEY",
    "PlanError",
    "PlanOptions",
    "build_parser",
    "bytes_per_key",
    "check_services",
    "choose_peak_rate",
    "main",
    "parse_options",
]

logger = logging.getLogger(__name__)


# --- Command line ---------------------------------------------------------------------------


def _number_at_least(minimum: float, *, above: bool = False) -> Any:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        valid = value > minimum if above else value >= minimum
        if not math.isfinite(value) or not valid:
            relation = "above" if above else "of at least"
            raise argparse.ArgumentTypeError(
                f"{text} is invalid: use a number {relation} {minimum:g}"
            )
        return value

    return convert


def _fraction(text: str) -> float:
    value = _number_at_least(0.0)(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is invalid: use a fraction from 0 up to 1")
    return float(value)


def _whole_number_at_least(minimum: int) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is invalid: use {minimum} or more")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `capacity-plan`."""
    parser = argparse.ArgumentParser(
        prog="capacity-plan",
        description=(
            "Measure the supervisor under step load (or read a run bundle), calibrate the model, "
            "and recommend SUPERVISOR_WORKER_POOL_SIZE, SUPERVISOR_QUEUE_MAX_SIZE and alert "
            f"thresholds. Uses {REDIS_URL_VARIABLE} and {DATABASE_URL_VARIABLE} when set."
        ),
    )
    parser.add_argument("--quick", action="store_true",
                        help="short run and few replications (under 10 minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="report folder, new or empty (default capacity-reports/<UTC time>)")
    parser.add_argument("--bundle", type=Path, default=None, metavar="DIR",
                        help="analyse this run bundle (for example from staging) instead of "
                        "recording a run here")

    parser.add_argument("--peak-rate-per-s", type=_number_at_least(0.0, above=True),
                        metavar="R", help="planned peak events/s (default: the highest measured "
                        "step served without drops and within the latency target)")
    parser.add_argument("--headroom", type=_number_at_least(1.0), default=DEFAULT_HEADROOM,
                        metavar="H", help="size the pool for peak times H (default %(default)s)")
    parser.add_argument("--target-latency-ms", type=_number_at_least(0.0, above=True),
                        default=DEFAULT_TARGET_LATENCY_MS, metavar="MS",
                        help="p95 end-to-end latency target in ms (default %(default)s)")
    parser.add_argument("--max-drop-rate", type=_fraction, default=DEFAULT_MAX_DROP_RATE,
                        metavar="F", help="highest acceptable drop rate (default %(default)s)")
    parser.add_argument("--max-error-rate", type=_fraction, default=DEFAULT_MAX_ERROR_RATE,
                        metavar="F",
                        help="highest acceptable execution error rate (default %(default)s)")
    parser.add_argument("--burst-rate-per-s", type=_number_at_least(0.0, above=True),
                        metavar="R", help="burst the queue must absorb, in events/s "
                        f"(default {DEFAULT_BURST_FACTOR:g} times the peak rate)")
    parser.add_argument("--burst-duration-s", type=_number_at_least(0.0, above=True),
                        metavar="S", help="length of that burst in s (default 10 to 30 by mode)")

    parser.add_argument("--shards", type=_whole_number_at_least(1), metavar="N",
                        help="planned SUPERVISOR_SHARD_COUNT (default: the measured run's)")
    parser.add_argument("--configs-total", type=_whole_number_at_least(1), metavar="N",
                        help="configs in the production table, for the database load "
                        "(default: the measured run's)")
    parser.add_argument("--changed-rows-per-s", type=_number_at_least(0.0), default=1.0,
                        metavar="R", help="config rows changed per second in production, for "
                        "the incremental refresh load (default %(default)s)")

    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                        help="run the verification run at the recommendation (default: on, "
                        "off with --bundle)")
    parser.add_argument("--no-notebooks", dest="notebooks", action="store_false",
                        help="do not execute the notebooks")
    parser.add_argument("--seed", type=_whole_number_at_least(0), default=DEFAULT_SEED,
                        help="seed of the model runs (default %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log at INFO level")
    return parser


def parse_options(argv: Sequence[str] | None) -> PlanOptions:
    """Parse and check the command line; argparse exits with 2 on an invalid option."""
    args = build_parser().parse_args(argv)
    out_dir = args.out
    if out_dir is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = Path("capacity-reports") / stamp
    verify = args.verify if args.verify is not None else args.bundle is None
    return PlanOptions(
        quick=args.quick,
        out_dir=out_dir,
        bundle_dir=args.bundle,
        peak_rate_per_s=args.peak_rate_per_s,
        headroom=args.headroom,
        target_latency_ms=args.target_latency_ms,
        max_drop_rate=args.max_drop_rate,
        max_error_rate=args.max_error_rate,
        burst_rate_per_s=args.burst_rate_per_s,
        burst_duration_s=args.burst_duration_s,
        shard_count=args.shards,
        configs_total=args.configs_total,
        changed_rows_per_s=args.changed_rows_per_s,
        verify=verify,
        notebooks=args.notebooks,
        seed=args.seed,
        verbose=args.verbose,
        redis_url=os.environ.get(REDIS_URL_VARIABLE) or None,
        database_url=os.environ.get(DATABASE_URL_VARIABLE) or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run `capacity-plan`; return 0 on success, 1 on an error, 130 when interrupted."""
    options = parse_options(argv)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    progress = StageProgress(STAGE_COUNT)
    try:
        report_dir = run_plan(options, progress)
    except KeyboardInterrupt:
        print("capacity-plan: interrupted; the processes it started were stopped",
              file=sys.stderr)
        return 130
    except (PlanError, ScenarioError, NotebookError, OSError, ValueError) as error:
        # ValueError covers the analysis errors (BundleError, ConfigError, ReportError, ...),
        # whose messages name the value and the fix; --verbose adds the traceback to the log.
        logger.info("capacity plan failed", exc_info=True)
        print(f"capacity-plan: error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(f"capacity-plan: report written to {report_dir} in {progress.elapsed_s:.0f} s")
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
