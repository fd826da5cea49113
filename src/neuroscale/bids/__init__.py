"""The BIDS front door: dataset discovery, participant selection, derivative naming.

* :func:`find_bold_runs` -> list of :class:`BoldRun` (path, entities, merged sidecar,
  events, fMRIPrep confounds), with BIDS-App ``--participant-label`` and fMRIPrep-style
  ``--bids-filter-file`` (:func:`load_bids_filter_file`) selection.
* :func:`derivative_path` builds BIDS-Derivatives file names;
  :func:`write_dataset_description` writes the derivative ``dataset_description.json``.

Provenance sidecars live in :mod:`neuroscale.provenance`.
"""

from neuroscale.bids.derivatives import (
    BIDS_VERSION,
    DERIVATIVE_ENTITY_ORDER,
    RAW_DATASET_NAME,
    code_commit,
    dataset_link_names,
    derivative_name,
    derivative_path,
    sanitize_label,
    write_dataset_description,
)
from neuroscale.bids.layout import (
    BoldRun,
    find_bold_runs,
    list_participants,
    load_bids_filter_file,
    normalize_filters,
    parse_bids_name,
    read_dataset_description,
)

__all__ = [
    "BIDS_VERSION",
    "DERIVATIVE_ENTITY_ORDER",
    "RAW_DATASET_NAME",
    "BoldRun",
    "code_commit",
    "dataset_link_names",
    "derivative_name",
    "derivative_path",
    "find_bold_runs",
    "list_participants",
    "load_bids_filter_file",
    "normalize_filters",
    "parse_bids_name",
    "read_dataset_description",
    "sanitize_label",
    "write_dataset_description",
]
