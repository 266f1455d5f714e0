"""Sweep bookkeeping: each run's final metrics record and the multirun summary table."""
