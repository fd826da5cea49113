"""HTML reports and figures (participant and group), in the spirit of fMRIPrep / MRIQC reports.

Reports are single self-contained HTML files: figures are embedded PNGs, the style sheet is
inline, nothing is fetched from the network.  Importing this package does not import matplotlib
or Jinja2; they are imported when a report is written.
"""

from __future__ import annotations

from neuroscale.report.html import (
    ConnectivityMatrix,
    RunReport,
    format_value,
    write_group_report,
    write_subject_report,
)

__all__ = [
    "ConnectivityMatrix",
    "RunReport",
    "format_value",
    "write_group_report",
    "write_subject_report",
]
