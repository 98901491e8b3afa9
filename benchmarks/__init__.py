"""Benchmarks of the tutorial notebook against the official PyTorch tutorial's algorithm.

See benchmarks/README.md.
"""
