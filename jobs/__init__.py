"""Job entry points: one module per job, run as ``python -m jobs.<name> --ds YYYY-MM-DD``."""
