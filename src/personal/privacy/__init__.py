"""Differential privacy: Poisson sampling, noise, DP-SGD, accounting and the per-unit ledger."""
