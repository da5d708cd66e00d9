"""Benchmarks that measure fedfms itself: the paper's Table 2 (``fedfms efficiency``)."""
