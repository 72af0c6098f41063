import sys

from simulation.cli import main_cli

sys.exit(main_cli())
