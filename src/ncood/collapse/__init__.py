"""Neural collapse: class statistics, NC1-NC5, per-layer and per-epoch analysis.

```python
from ncood.collapse import collapse_metrics, nc5
m = collapse_metrics(features, labels, head)   # every NC metric + per-class arrays
nc5(features, labels, ood_features)            # OrthoDev (NECO, arXiv 2310.06823)
```
"""

from ncood.collapse.metrics import (
    collapse_metrics,
    decision_metrics,
    layer_metrics,
    metrics_from_stats,
    nc5,
    nc5_centred,
    to_jsonable,
)
from ncood.collapse.stats import ClassStats

__all__ = [
    "ClassStats",
    "collapse_metrics",
    "decision_metrics",
    "layer_metrics",
    "metrics_from_stats",
    "nc5",
    "nc5_centred",
    "to_jsonable",
]
