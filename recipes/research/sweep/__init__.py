"""Sweeps: variants against a base with seeds, budgets and parameters matched, paired statistics."""
