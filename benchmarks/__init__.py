"""Benchmarks of the tutorial notebook against the official PyTorch tutorial's algorithm (see README.md)."""
