"""Nightly batch scoring: the exact top-K kernel, re-ranking, cold start, score tables,
output contracts, and the Spark path."""
