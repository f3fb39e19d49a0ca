"""A linear classifier fitted on frozen features (a "probe").

Earlier layers have no classifier of their own; detectors that need logits (ViM's
virtual logit, the energy term) get one fitted here, on that layer's train features.
"""

from __future__ import annotations

import numpy as np

from ncood.features.types import LinearHead
from ncood.validation import as_2d_float, as_labels


def fit_linear_head(
    features, labels, *, num_classes: int | None = None, C: float = 1.0, max_iter: int = 300
) -> LinearHead:
    """Multinomial logistic regression on standardised features, folded back into raw space.

    Args:
        features: ``(n_samples, n_features)``.
        labels: ``(n_samples,)`` in ``0..C-1``.
        num_classes: number of classes (default: ``max(labels) + 1``).
        C: inverse L2 strength (scikit-learn's convention).
        max_iter: L-BFGS iterations.

    Returns:
        LinearHead with ``W (C, D)``, ``b (C,)`` acting on the *raw* features.
    """
    from sklearn.linear_model import LogisticRegression

    z = as_2d_float(features, "probe features")
    y = as_labels(labels, z.shape[0])
    c = int(y.max()) + 1 if num_classes is None else num_classes
    mean = z.mean(axis=0)
    std = z.std(axis=0)
    std[std < 1e-12] = 1.0  # constant columns carry no signal; leave them unscaled
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit((z - mean) / std, y)
    w = np.zeros((c, z.shape[1]))
    b = np.full(c, -1e3)  # classes absent from the fit are never predicted
    coef, icpt = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary case: sklearn keeps one row
        coef, icpt = np.vstack([-coef, coef]) / 2, np.array([-icpt[0], icpt[0]]) / 2
    w[clf.classes_] = coef / std
    b[clf.classes_] = icpt - (coef / std) @ mean
    return LinearHead(w, b)
