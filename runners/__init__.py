"""Training, evaluation, scoring and aggregation of runs (see runners/train.py)."""
