"""Synthetic e-commerce event and catalog generator (raw lake contract, see docs)."""

from ecrec_lib.generator.core import TRUTH_DIR, DaySummary, GenerationSummary, generate

__all__ = ["TRUTH_DIR", "DaySummary", "GenerationSummary", "generate"]
