"""Evaluation: metrics, baseline routers, the comparison on a test split, and its report."""
