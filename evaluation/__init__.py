"""Paper-style evaluation reports (``python evaluate.py``): AIF detection and mapping statistics.

Not part of the scanner runtime: may use matplotlib, h5py, Hydra and Lightning.
"""
