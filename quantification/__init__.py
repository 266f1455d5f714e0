"""Pure NumPy/SciPy quantification: AIF preprocessing and curves, relaxometry, ECV, statistics."""
