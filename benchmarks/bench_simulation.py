"""Simulation benchmark: events per second of three engines, and the wall time of a sweep.

Engine rate: one replication of an M/M/8/40 queue at utilisation 0.9 (arrivals at 100/s,
exponential service with mean 72 ms), run by

- the SimPy model with its monitoring on: `simulation.model.run_replication`, the summary of
  `simulation.analysis.summarize_run` and the scrape series of `simulation.monitor`;
- the recursion engine: `simulation.recursion.run_config` and the same summary;
- Ciw (benchmark-only dependency) on the same queue, with `get_all_records()` at the end.

The figure is arrivals simulated per second of wall time, the best of `--repeats` runs, so a
burst of other work on the machine costs less. The SimPy model's target is 1.5 times Ciw's rate.

Sweep: 12 pool sizes (4 to 15) x 5 replications of one simulated hour at 100 events/s, with
exponential service of mean 90 ms and the default queue capacity of 1000. The capacity
`pool_size / 0.09` then goes from 44/s (4 workers, overload) to 167/s (15 workers, utilisation
0.6), and 9 workers are at utilisation 1.0. The sweep runs on both engines with `os.cpu_count()`
processes, and the target is under 2 minutes for the SimPy model.

Run: `python benchmarks/bench_simulation.py [--quick] [--write-docs]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import ciw  # noqa: E402

from simulation.analysis import summarize_run  # noqa: E402
from simulation.config import ArrivalConfig, ExecutionConfig, ModelConfig  # noqa: E402
from simulation.model import run_replication  # noqa: E402
from simulation.monitor import scrape_series  # noqa: E402
from simulation.recursion import run_config  # noqa: E402
from simulation.sweep import Engine, run_sweep  # noqa: E402

DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"
SECTION_TITLE = "## Simulation"
DOCS_HEADER = (
    "# Benchmark results\n\n"
    "Measured speed of the suite's parts, one section per benchmark script under `benchmarks/`.\n"
)

ARRIVAL_RATE_PER_S = 100.0
ENGINE_SERVICE_MEAN_MS = 72.0
ENGINE_POOL_SIZE = 8
ENGINE_QUEUE_MAX = 40
SWEEP_SERVICE_MEAN_MS = 90.0
SWEEP_POOL_SIZES = list(range(4, 16))
SWEEP_REPLICATIONS = 5
SWEEP_DURATION_S = 3600.0
SIMPY_OVER_CIW_TARGET = 1.5
SWEEP_TARGET_S = 120.0


def engine_config(duration_s: float) -> ModelConfig:
    """Return the M/M/8/40 queue at utilisation 0.9 with a fixed warm-up."""
    return ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=ARRIVAL_RATE_PER_S),
        execution=ExecutionConfig(latency="exponential", latency_mean_ms=ENGINE_SERVICE_MEAN_MS),
        pool_size=ENGINE_POOL_SIZE,
        queue_max=ENGINE_QUEUE_MAX,
        duration_s=duration_s,
        warmup_s=duration_s / 10.0,
        seed=1,
    )


def run_simpy_model(config: ModelConfig) -> int:
    """Run the SimPy model with its monitoring on; return the number of arrivals."""
    run = run_replication(config, 0)
    summarize_run(run, config.warmup_s)
    scrape_series(run, config.scrape_interval_s)
    return int(run.events.arrival_s.size)


def run_recursion(config: ModelConfig) -> int:
    """Run the recursion engine and summarise it; return the number of arrivals."""
    run = run_config(config, 0)
    summarize_run(run, config.warmup_s)
    return int(run.events.arrival_s.size)


def run_ciw(config: ModelConfig) -> int:
    """Run Ciw on the same M/M/c/K queue; return the number of arrivals it recorded."""
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=config.arrivals.rate_per_s)],
        service_distributions=[
            ciw.dists.Exponential(rate=1000.0 / config.execution.latency_mean_ms)
        ],
        number_of_servers=[config.pool_size],
        queue_capacities=[config.queue_max],
    )
    ciw.seed(1)
    simulation = ciw.Simulation(network)
    simulation.simulate_until_max_time(config.duration_s)
    records = simulation.get_all_records()
    # Records cover served and rejected arrivals; those still in the system have none yet.
    in_system = sum(len(node.all_individuals) for node in simulation.transitive_nodes)
    return len(records) + in_system


def best_rate_per_s(run: Callable[[ModelConfig], int], config: ModelConfig, repeats: int) -> float:
    """Return the highest arrivals-per-second rate of `repeats` timed runs."""
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        arrivals = run(config)
        elapsed_s = time.perf_counter() - began
        rates.append(arrivals / elapsed_s)
    return max(rates)


def sweep_config(duration_s: float) -> ModelConfig:
    """Return the base config of the sweep benchmark."""
    return ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=ARRIVAL_RATE_PER_S),
        execution=ExecutionConfig(latency="exponential", latency_mean_ms=SWEEP_SERVICE_MEAN_MS),
        duration_s=duration_s,
        warmup_s=duration_s / 20.0,
    )


def time_sweep(engine: Engine, duration_s: float, workers: int) -> tuple[float, float]:
    """Return the wall time and the CPU time in seconds of the benchmark sweep on `engine`.

    CPU time adds this process and its finished child processes, so it shows what the sweep
    costs when other work on the machine slows the wall time.
    """
    cpu_before_s = _cpu_time_s()
    began = time.perf_counter()
    run_sweep(
        sweep_config(duration_s),
        {"pool_size": SWEEP_POOL_SIZES},
        replications=SWEEP_REPLICATIONS,
        seed=0,
        workers=workers,
        progress=False,
        engine=engine,
    )
    return time.perf_counter() - began, _cpu_time_s() - cpu_before_s


def _cpu_time_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_description() -> str:
    """Return nproc, CPU model, Python version, load average and date, for the docs."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs (nproc), {cpu_model}, Python {platform.python_version()}, "
        f"Ciw {ciw.__version__}, load average before the run {load}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit or 'unknown'}"
    )


def results_section(
    machine: str,
    rates: dict[str, float],
    sweep_s: dict[str, tuple[float, float]],
    options: argparse.Namespace,
) -> str:
    """Return the Simulation section of docs/benchmarks.md in Markdown."""
    ciw_rate = rates["Ciw"]
    lines = [
        SECTION_TITLE,
        "",
        "Produced by `python benchmarks/bench_simulation.py --write-docs"
        + (" --quick" if options.quick else "")
        + "`; the script's docstring says what each figure measures.",
        "",
        f"Machine: {machine}.",
        "",
        f"Engine rate on M/M/8/40 at utilisation 0.9 ({options.engine_duration_s:g} simulated "
        f"seconds, about {ARRIVAL_RATE_PER_S * options.engine_duration_s:,.0f} arrivals, best "
        f"of {options.repeats} runs):",
        "",
        "| engine | arrivals simulated per second | ratio to Ciw |",
        "| --- | ---: | ---: |",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / ciw_rate:.2f} |")
    simpy_ratio = rates["SimPy model, monitoring on"] / ciw_rate
    verdict = "met" if simpy_ratio >= SIMPY_OVER_CIW_TARGET else "missed"
    lines += [
        "",
        f"Target: the SimPy model at {SIMPY_OVER_CIW_TARGET}x Ciw's rate or more: {verdict} "
        f"({simpy_ratio:.2f}x).",
        "",
        f"Sweep of {len(SWEEP_POOL_SIZES)} pool sizes ({SWEEP_POOL_SIZES[0]} to "
        f"{SWEEP_POOL_SIZES[-1]}) x {SWEEP_REPLICATIONS} replications of "
        f"{options.sweep_duration_s:g} simulated seconds at {ARRIVAL_RATE_PER_S:g} events/s, "
        f"exponential service with mean {SWEEP_SERVICE_MEAN_MS:g} ms, {options.workers} "
        "worker processes:",
        "",
        "| engine | wall time (s) | CPU time, all processes (s) |",
        "| --- | ---: | ---: |",
    ]
    for engine, (elapsed_s, cpu_s) in sweep_s.items():
        lines.append(f"| {engine} | {elapsed_s:.1f} | {cpu_s:.1f} |")
    sweep_verdict = "met" if sweep_s["simpy"][0] < SWEEP_TARGET_S else "missed"
    lines += [
        "",
        f"Target: the SimPy sweep under {SWEEP_TARGET_S:g} s: {sweep_verdict}.",
        "",
        "The machine's CPUs are shared with other work, so wall times vary between runs by "
        "tens of percent. The CPU time of a sweep divided by the number of CPUs estimates its "
        "wall time on an idle machine; compare runs from the same machine.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace the Simulation section of docs/benchmarks.md, leaving other sections untouched."""
    text = DOCS_PATH.read_text(encoding="utf-8") if DOCS_PATH.exists() else DOCS_HEADER
    start = text.find(SECTION_TITLE + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        tail = text[end + 1 :] if end >= 0 else ""
        text = text[:start] + section + ("\n" + tail if tail else "")
    DOCS_PATH.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    """Parse the benchmark's options; `--quick` shortens every run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="sweep worker processes"
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="write the results into the Simulation section of docs/benchmarks.md",
    )
    options = parser.parse_args(argv)
    options.engine_duration_s = 200.0 if options.quick else 2000.0
    options.sweep_duration_s = 360.0 if options.quick else SWEEP_DURATION_S
    return options


def main(argv: list[str] | None = None) -> int:
    """Run the engine and sweep benchmarks, print the results and optionally record them."""
    options = parse_options(argv)
    machine = machine_description()
    config = engine_config(options.engine_duration_s)
    engines: dict[str, Callable[[ModelConfig], int]] = {
        "SimPy model, monitoring on": run_simpy_model,
        "recursion": run_recursion,
        "Ciw": run_ciw,
    }
    rates = {}
    for name, run in engines.items():
        rates[name] = best_rate_per_s(run, config, options.repeats)
        print(f"{name}: {rates[name]:,.0f} arrivals/s", flush=True)

    sweep_s: dict[str, tuple[float, float]] = {}
    engine: Engine
    for engine in ("simpy", "recursion"):
        sweep_s[engine] = time_sweep(engine, options.sweep_duration_s, options.workers)
        elapsed_s, cpu_s = sweep_s[engine]
        print(f"sweep on {engine}: {elapsed_s:.1f} s wall, {cpu_s:.1f} s CPU", flush=True)

    section = results_section(machine, rates, sweep_s, options)
    print()
    print(section)
    if options.write_docs:
        write_section(section)
        print(f"wrote the Simulation section of {DOCS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
