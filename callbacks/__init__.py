"""Lightning callbacks used by train.py (prediction figures)."""
