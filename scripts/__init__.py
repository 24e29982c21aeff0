"""Tools: parameter counts (params.py), prefetch, benchmarks."""
