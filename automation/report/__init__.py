"""``automation report``: what a playbook did over a period, computed in the database.

* ``queries``: the aggregate SQL (per step and variant, entries per cohort, stage transitions,
  conversions, the median time to convert, conversions per day), the same on SQLite and PostgreSQL;
* ``stats``: two proportions compared (pooled z-test, 95% interval, the power rule for "enough data");
* ``build``: the ``Report`` put together from both, and its JSON;
* ``table``: the rich tables of the terminal; ``html``: the self-contained page with inline SVG.
"""

from __future__ import annotations

from automation.report.build import Report, build_report

__all__ = ["Report", "build_report"]
