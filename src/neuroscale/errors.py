"""One exception hierarchy for neuroscale.

Every error a user can cause derives from :class:`NeuroscaleError`; each subclass also
derives from the builtin it resembles (as zarr's ``errors.py`` does), so ``except ValueError``
keeps working for callers that do not know neuroscale.  Messages are one line, name the file
and say what is wrong.
"""

from __future__ import annotations

from pathlib import Path


class NeuroscaleError(Exception):
    """Root of every error neuroscale raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(text)


class InputNotFoundError(NeuroscaleError, FileNotFoundError):
    """An input file or directory does not exist."""

    exit_code = 2


class BIDSError(NeuroscaleError, ValueError):
    """The input directory is not a usable BIDS dataset, or a query found nothing."""

    exit_code = 2


class NoBoldRunError(BIDSError):
    """No BOLD run matches the requested participants/filters."""


class ImageFormatError(NeuroscaleError, ValueError):
    """A NIfTI file is malformed: bad magic, bad header, non-finite scaling, wrong dimensionality."""

    exit_code = 3


class TruncatedDataError(ImageFormatError, EOFError):
    """The image data ends before the header says it should."""


class CorruptedFileError(ImageFormatError):
    """A checksum (gzip CRC-32, stored sha256) does not match the bytes read."""


class MissingMetadataError(NeuroscaleError, ValueError):
    """Required metadata (e.g. the repetition time) is missing or invalid."""

    exit_code = 3


class AnalysisError(NeuroscaleError, ValueError):
    """Data are valid files but unsuitable for an analysis (too few volumes, no overlap...)."""

    exit_code = 4


class RegistrationError(AnalysisError):
    """A registration failed or diverged (e.g. the warped brain misses the template's mask)."""


class ConfigurationError(NeuroscaleError, ValueError):
    """A command-line option, parameter or configuration value is invalid."""

    exit_code = 2


class ComputeError(NeuroscaleError, RuntimeError):
    """The Dask cluster could not be started, reached, or lost work it could not recover."""

    exit_code = 5


__all__ = [
    "AnalysisError",
    "BIDSError",
    "ComputeError",
    "ConfigurationError",
    "CorruptedFileError",
    "ImageFormatError",
    "InputNotFoundError",
    "MissingMetadataError",
    "NeuroscaleError",
    "NoBoldRunError",
    "RegistrationError",
    "TruncatedDataError",
]
