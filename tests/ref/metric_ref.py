"""The challenge metric in numpy, written from its definition (reference-method.md, "The
task"): weighted multi-label log loss, every (slice, subtype) row weighted 2 for 'any' and 1
for the five subtypes, predictions clipped to [1e-5, 1 - 1e-5], the weighted mean of the rows.
Rows whose label is -1 (no CSV row) are left out. Independent of the project's C code.
"""
import numpy as np

SUBTYPES = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
EPS = 1e-5


def row_losses(prob, label):
    """Per-row log loss (n x 6) after clipping; NaN where label is -1."""
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(label, dtype=np.float64)
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return np.where(y < 0, np.nan, loss)


def score(prob, label):
    """(overall, [six per-subtype means], [six row counts])."""
    loss = row_losses(prob, label)
    present = ~np.isnan(loss)
    rows = present.sum(axis=0)
    sums = np.where(present, loss, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_subtype = sums / rows
    weight = np.broadcast_to(WEIGHTS, loss.shape)[present]
    overall = float(np.sum(weight * loss[present]) / np.sum(weight))
    return overall, per_subtype.tolist(), rows.tolist()
