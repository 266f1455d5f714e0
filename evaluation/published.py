"""Published results of the source papers (method.md §A7, B5), printed beside ours for reference
only.

Different data (real scans with expert labels vs phantoms), so no test compares against them.
"""

from __future__ import annotations

AIF_DETECTION = {
    # method: (n scans, detection rate %, Dice mean, Dice SD, Dice > 0.75 %, failures)
    "resunet3cs": (5721, 99.98, 0.87, 0.08, 92.0, 1),
    "resunet2cs": (5721, None, 0.82, 0.22, 80.8, None),
    "legacy": (5721, 99.1, None, None, None, 52),
}
"""Xue et al., hold-out test set (docs/method.md §A7). None: not reported."""

AIF_FEATURES = {
    # feature: (manual mean, manual SD, 3CS mean, 3CS SD, mean % difference)
    "foot_s": (14.0, 3.41, 14.0, 3.42, 0.51),
    "peak_s": (18.0, 4.52, 18.0, 4.55, 0.52),
    "first_pass_s": (13.2, 4.97, 13.2, 5.00, None),
    "peak_value": (0.385, 0.099, 0.383, 0.099, 1.61),
    "auc": (6.14, 2.18, 6.12, 2.19, 2.00),
}
"""Xue et al., AIF features from manual vs 3CS masks (docs/method.md §A7); all paired P > 0.2."""

AIF_CURVE_CC = (0.998, 0.012)
"""Curve correlation manual vs 3CS, mean and SD (docs/method.md §A7)."""

MAPPING_TABLE2 = {
    # exp: (refined %, DSC mean, DSC SD, SR patients %, slope pt, R pt, SR slices %, slope sl,
    #       R sl, slope seg, R seg)
    "exp1": (2.6, 0.87, 0.11, 97, 1.01, 0.88, 94, 1.00, 0.83, 0.99, 0.75),
    "exp2": (2.6, 0.87, 0.07, 98, 1.07, 0.84, 92, 1.07, 0.83, 1.07, 0.77),
    "exp3": (4.1, 0.88, 0.07, 88, 1.09, 0.84, 87, 1.09, 0.85, 1.09, 0.77),
    "exp4": (3.4, 0.84, 0.12, 83, 0.99, 0.91, 78, 0.99, 0.84, 0.98, 0.76),
    "exp5": (2.9, 0.87, 0.08, 87, 0.98, 0.92, 81, 0.98, 0.87, 0.98, 0.79),
    "exp6": (2.9, 0.89, 0.07, 86, 0.99, 0.93, 80, 0.99, 0.87, 0.99, 0.80),
}
"""Fahmy et al., Table 2 (docs/method.md §B5)."""

MAPPING_SENS_SPEC = {"t2": (71.4, 95.4), "ecv": (84.4, 90.1)}
"""Fahmy et al., Table 3 (N0): sensitivity and specificity % for T2 >= 58 ms, ECV >= 29 %."""
