"""SimPy capacity model of the supervisor's worker pool, queue and refresh cadence.

Start with `ModelConfig` (what to simulate) and `simulate` (run the replications and summarise
them); `python -m simulation run` does the same from the command line.
"""

from simulation.analysis import SUMMARY_KEYS, combine_replications, summarize_run
from simulation.config import ConfigError, ModelConfig
from simulation.model import SimulationResult, draw_inputs, run_replication, simulate

__all__ = [
    "SUMMARY_KEYS",
    "ConfigError",
    "ModelConfig",
    "SimulationResult",
    "combine_replications",
    "draw_inputs",
    "run_replication",
    "simulate",
    "summarize_run",
]
