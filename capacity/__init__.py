"""Capacity plan: calibrate the model from a run bundle, compare, recommend, tune alerts.

Everything the notebooks and the `capacity-plan` command show is computed here, so it is unit
tested; the notebooks call these functions and explain the results.
"""
