"""A linear classifier fitted on frozen features (a "probe").

Earlier layers have no classifier of their own; detectors that need logits (ViM's
virtual logit, the energy term) get one fitted here, on that layer's train features.
"""

from __future__ import annotations

import numpy as np
import torch

from ncood.types import LinearHead
from ncood.validation import as_2d_float, as_labels


def fit_linear_head(
    features,
    labels,
    *,
    num_classes: int | None = None,
    l2: float = 1e-4,
    max_iter: int = 200,
) -> LinearHead:
    """Multinomial logistic regression on standardised features, folded back into raw space.

    Minimises ``mean cross-entropy + l2/2 * ||W||_F^2`` over standardised features with
    L-BFGS (strong Wolfe line search) in float64: deterministic, and fast because every
    step is one ``(n, D) x (D, C)`` matmul.

    Args:
        features: ``(n_samples, n_features)``.
        labels: ``(n_samples,)`` in ``0..C-1``.
        num_classes: number of classes (default: ``max(labels) + 1``).
        l2: L2 penalty on the standardised weights.
        max_iter: L-BFGS iterations.

    Returns:
        LinearHead with ``W (C, D)``, ``b (C,)`` acting on the *raw* features.
    """
    z = as_2d_float(features, "probe features")
    y = as_labels(labels, z.shape[0])
    c = int(y.max()) + 1 if num_classes is None else num_classes
    mean = z.mean(axis=0)
    std = z.std(axis=0)
    std[std < 1e-12] = 1.0  # constant columns carry no signal; leave them unscaled
    x = torch.from_numpy((z - mean) / std)
    t = torch.from_numpy(np.array(y, dtype=np.int64))  # a writable copy (labels may be mmapped)
    w = torch.zeros(c, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, t) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_std = w.detach().numpy()
    w_raw = w_std / std
    return LinearHead(w_raw, b.detach().numpy() - w_raw @ mean)
