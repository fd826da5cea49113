"""neuroscale: out-of-core, distributed analysis of big brain-imaging data on Dask.

The core data model lives in :mod:`neuroscale.image` (``Image`` and ``Series``); readers in
:mod:`neuroscale.io`; analyses in :mod:`neuroscale.analysis`; the BIDS-App pipelines in
:mod:`neuroscale.pipelines`.
"""

__version__ = "0.1.0"

from neuroscale.image import Image, Series, open_image

__all__ = ["Image", "Series", "__version__", "open_image"]
