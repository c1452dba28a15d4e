"""The anti-pattern catalog (DESIGN §7): one scenario under a fair and an unfair evaluation setup,
and how the conclusion changes.

`catalog` holds the entries, `model` the declarative types and the conclusion rules, `runner`
runs entries (`CatalogRunner`), `report`/`figures` write report.md, verdicts.json and PNGs,
`checklist` lints an evaluation description (`simserve check`), `commands` adds the CLI.
"""

from simserve.antipatterns.catalog import CATALOG, SIZES, get_entries
from simserve.antipatterns.model import (
    Capacity,
    Conclusion,
    Entry,
    Metric,
    Point,
    Setup,
    Size,
    Sweep,
    classify,
    conclude,
)

__all__ = [
    "CATALOG",
    "SIZES",
    "Capacity",
    "Conclusion",
    "Entry",
    "Metric",
    "Point",
    "Setup",
    "Size",
    "Sweep",
    "classify",
    "conclude",
    "get_entries",
]
