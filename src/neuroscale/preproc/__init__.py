"""Preprocessing of raw BIDS input: motion correction, anatomical processing and
registration to a template, confound time series (fMRIPrep conventions)."""
