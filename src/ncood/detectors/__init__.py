"""OOD detectors: a registry of fit/score objects on arrays (DESIGN.md sections 3-4).

```python
from ncood.detectors import create_detector, list_detectors
det = create_detector("vim", dim=32)          # keyword-only hyperparameters, validated
det.fit(features, labels, head)               # -> self; or fit(..., stats=ClassStats)
det.score(features, logits)                   # -> (n,) float64, higher = in-distribution
```

One module per family: ``logit`` (msp, maxlogit, energy, react, gen, entropy,
kl_matching), ``gaussian`` (mahalanobis), ``subspace`` (vim, neco), ``neighbors`` (knn,
nnguide), ``classwise`` (rmds, fdbd, nci, she), ``activation`` (scale, ash_s, ash_p,
ash_b, dice); docs/detectors.md lists them all. :func:`ncood.analysis.analyse` fits and
scores a set of detectors on a feature directory (as rows of the results table).
"""

from ncood.detectors import (  # noqa: F401  (registration)
    activation,
    classwise,
    gaussian,
    logit,
    neighbors,
    subspace,
)
from ncood.detectors.base import (
    Detector,
    create_detector,
    detector_class,
    list_detectors,
    register_detector,
)

__all__ = [
    "Detector",
    "create_detector",
    "detector_class",
    "list_detectors",
    "register_detector",
]
