"""Benchmarks: scripts that measure fedsim against a plain PyTorch loop and Flower's Ray engine."""
