"""Reports of a run: tables, figures, findings, ``report.md`` and ``report.html``.

```python
from ncood.report import write_report, validate_results, format_terminal_summary, findings
validate_results(results)                      # raises ResultsError naming the bad field
paths = write_report(results, scores, "runs/default")   # figures/*.png, report.md, report.html
print(format_terminal_summary(results))        # plain-text tables for the terminal (CLI only)
```

``results`` is the content of results.json (docs/results_schema.md, checked against
``schema.json``); ``scores`` the content of scores.npz.
"""

from ncood.report.findings import findings
from ncood.report.render import (
    SECTION_IDS,
    ResultsError,
    render_html,
    render_markdown,
    results_schema,
    validate_results,
    write_report,
)
from ncood.report.tables import format_terminal_summary, markdown_tables

__all__ = [
    "SECTION_IDS",
    "ResultsError",
    "findings",
    "format_terminal_summary",
    "markdown_tables",
    "render_html",
    "render_markdown",
    "results_schema",
    "validate_results",
    "write_report",
]
