"""Python benchmarks, run as modules from the repository root: python -m benches.<name>."""
