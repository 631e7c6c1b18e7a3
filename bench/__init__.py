"""Benchmarks: chattune vs seed 000's recipe vs TRL defaults (python -m bench)."""
