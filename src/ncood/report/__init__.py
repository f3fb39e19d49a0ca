"""Reports of a run, read from its tidy results table only.

```python
from ncood.report import write_report, terminal_summary, findings
paths = write_report(results, "runs/default", scores)   # report.html, report.md, figures/*.png
print(terminal_summary(results))                       # plain-text tables (the CLI prints)
findings(results)                                      # sentences quoting the numbers
```

``results`` is a :class:`ncood.results.Results`; ``scores`` the optional raw detector
scores ``{"<regime>/<detector>/<split>": (n,) array}`` (the content of scores.npz).
"""

from ncood.report import ranking as _ranking
from ncood.report import tables as _tables
from ncood.report.findings import findings
from ncood.report.render import SECTION_IDS, write_report
from ncood.results import Results


def terminal_summary(results: Results) -> str:
    """The main result tables as plain text for a terminal (``*`` marks the best values).

    Training, then per regime AUROC and FPR@95 of every detector on every OOD set, the
    detectors ranked by AUROC per OOD set (intervals, ties with the best, hyperparameters)
    and the hyperparameters chosen on validation data, then NC1-NC4 and NC5 of the
    penultimate layer; tables the run did not compute are left out.
    """
    res = _tables.named(results)
    tables = [_tables.training_table(res)]
    for regime in _tables.regimes(res):
        tables += [_tables.metric_table(res, regime, m) for m in ("auroc", "fpr95")]
    for regime in _tables.regimes(res):
        tables += [_ranking.ranking_table(res, regime, o) for o in _tables.oods(res)]
        tables.append(_ranking.selection_summary_table(res, regime))
    tables += [_tables.collapse_table(res), _tables.nc5_table(res)]
    return "\n".join(_tables.text_table(t) for t in tables if t.rows)


__all__ = ["SECTION_IDS", "findings", "terminal_summary", "write_report"]
