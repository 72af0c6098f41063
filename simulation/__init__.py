"""SimPy capacity model of the supervisor's worker pool, queue and refresh cadence.

Start with `ModelConfig` (what to simulate) and `simulate` (run the replications and summarise
them); `python -m simulation run` does the same from the command line.
"""

from simulation.config import ConfigError, ModelConfig

__all__ = ["ConfigError", "ModelConfig"]
