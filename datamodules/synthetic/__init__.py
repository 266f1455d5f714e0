"""Physics-based synthetic phantoms, the embedded default data sets."""
