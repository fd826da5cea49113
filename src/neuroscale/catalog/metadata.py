"""Automatic metadata extraction at ingest: BIDS entities, NIfTI header facts, the BIDS JSON
sidecar, and DICOM series-level tags (without the identifying tags of DICOM PS3.15 Annex E).

Each extractor returns a list of :class:`Triple` (attribute, value, unit, source).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscale.catalog.errors import MetadataError
from neuroscale.catalog.paths import nfc

MAX_ATTRIBUTE = 255
MAX_VALUE = 2000
MAX_UNIT = 64

#: BIDS datatype directories (BIDS specification, "Data types").
BIDS_DATATYPES = {
    "anat", "func", "dwi", "fmap", "perf", "eeg", "meg", "ieeg", "beh", "pet", "micr",
    "nirs", "motion", "mrs",
}  # fmt: skip

#: Units of common BIDS sidecar fields (BIDS specification, "Magnetic Resonance Imaging").
SIDECAR_UNITS = {
    "RepetitionTime": "s",
    "EchoTime": "s",
    "InversionTime": "s",
    "SliceTiming": "s",
    "EffectiveEchoSpacing": "s",
    "TotalReadoutTime": "s",
    "DelayTime": "s",
    "AcquisitionDuration": "s",
    "DwellTime": "s",
    "FlipAngle": "deg",
    "MagneticFieldStrength": "T",
    "SliceThickness": "mm",
    "SpacingBetweenSlices": "mm",
    "ImagingFrequency": "MHz",
    "PixelBandwidth": "Hz/px",
    "SAR": "W/kg",
}

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")
_SUFFIX = re.compile(r"^[a-zA-Z0-9]+$")


@dataclass(frozen=True)
class Triple:
    """One attribute-value-unit triple and where it came from (``user``, ``bids``...)."""

    attribute: str
    value: str
    unit: str | None = None
    source: str = "user"

    @property
    def value_num(self) -> float | None:
        """The value as a finite float when it parses as a number, else None."""
        return as_number(self.value)


def as_number(value: str) -> float | None:
    """``float(value)`` when it is a finite number written plainly, else None."""
    text = value.strip()
    if not text or text.lower() in {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def format_value(value: Any) -> str:
    """Text form of a metadata value (numbers without a trailing '.0', lists as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def make_triple(
    attribute: str, value: Any, unit: str | None = None, source: str = "user"
) -> Triple:
    """Validate and build a :class:`Triple`.

    Raises
    ------
    MetadataError
        Empty or over-long attribute, over-long value or unit, or a NUL byte anywhere.
    """
    if not isinstance(attribute, str) or not attribute.strip():
        raise MetadataError("empty metadata attribute name")
    text = format_value(value)
    for what, item, limit in (
        ("attribute", attribute, MAX_ATTRIBUTE),
        ("value", text, MAX_VALUE),
        ("unit", unit or "", MAX_UNIT),
    ):
        if "\x00" in item:
            raise MetadataError(f"metadata {what} {item[:40]!r} contains a NUL byte")
        if len(item) > limit:
            raise MetadataError(f"metadata {what} {item[:40]!r}... longer than {limit} characters")
    # NFC: a value typed with combining accents and one read from a file name match
    return Triple(nfc(attribute.strip()), nfc(text), nfc(unit) if unit else None, source)


_UNIT = re.compile(r"^[A-Za-z%µμ°][A-Za-z0-9%µμ°/^.*_-]{0,63}$")


def parse_meta_option(text: str) -> Triple:
    """Parse ``KEY=VALUE[:UNIT]`` (the unit must start with a letter, ``%``, ``µ`` or ``°``).

    ``--meta time=12:30`` keeps ``12:30`` as the value because ``30`` is not a unit.

    Raises
    ------
    MetadataError
        No ``=``, or an invalid triple.
    """
    if "=" not in text:
        raise MetadataError(f"--meta {text!r}: expected KEY=VALUE[:UNIT]")
    key, value = text.split("=", 1)
    unit = None
    if ":" in value:
        head, tail = value.rsplit(":", 1)
        if _UNIT.match(tail):
            value, unit = head, tail
    return make_triple(key, value, unit, "user")


# ---------------------------------------------------------------------------------------------
# BIDS
# ---------------------------------------------------------------------------------------------
def split_bids_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """Entities, suffix and extension of a BIDS file name, or None when it is not one.

    ``sub-01_task-rest_run-1_bold.nii.gz`` -> ({'sub': '01', 'task': 'rest', 'run': '1'},
    'bold', '.nii.gz'), following the BIDS specification's "Filename structure" (key-value
    pairs joined by '_', then a suffix, then the extension from the first '.').
    """
    stem, dot, ext = name.partition(".")
    parts = stem.split("_")
    if len(parts) < 2:
        return None
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        m = _ENTITY.match(part)
        if m is None or m.group(1) in entities:
            return None
        entities[m.group(1)] = m.group(2)
    if not _SUFFIX.match(parts[-1]) or not entities:
        return None
    return entities, parts[-1], dot + ext


def bids_metadata(path: Path) -> list[Triple]:
    """BIDS entities of ``path`` (``sub``, ``ses``, ``task``, ``run``...), ``suffix``,
    ``extension`` and ``datatype`` (the parent directory when it is a BIDS data type)."""
    parsed = split_bids_name(path.name)
    if parsed is None:
        return []
    entities, suffix, ext = parsed
    if "sub" not in entities and not any(k in entities for k in ("task", "ses")):
        return []
    triples = [make_triple(k, v, None, "bids") for k, v in entities.items()]
    triples.append(make_triple("suffix", suffix, None, "bids"))
    if ext:
        triples.append(make_triple("extension", ext, None, "bids"))
    if path.parent.name in BIDS_DATATYPES:
        triples.append(make_triple("datatype", path.parent.name, None, "bids"))
    return triples


def find_dataset_root(path: Path, max_levels: int = 6) -> Path | None:
    """The nearest ancestor holding ``dataset_description.json`` (None when not found)."""
    here = path.parent
    for _ in range(max_levels):
        if (here / "dataset_description.json").is_file():
            return here
        if here.parent == here:
            break
        here = here.parent
    return None


def sidecar_files(path: Path) -> list[Path]:
    """JSON sidecars that apply to ``path`` under the BIDS inheritance principle, farthest first.

    A ``.json`` file applies when it lies in the file's directory or an ancestor up to the
    dataset root, has the same suffix, and its entities are a subset of the file's entities
    (BIDS specification, "The Inheritance Principle").
    """
    parsed = split_bids_name(path.name)
    if parsed is None:
        return []
    entities, suffix, ext = parsed
    if ext == ".json":
        return []
    root = find_dataset_root(path) or path.parent
    found: list[Path] = []
    here = path.parent
    while True:
        for candidate in sorted(here.glob(f"*{suffix}.json")):
            cp = split_bids_name(candidate.name) if "_" in candidate.name else None
            if candidate.name == f"{suffix}.json":
                cent: dict[str, str] = {}
            elif cp is None or cp[1] != suffix:
                continue
            else:
                cent = cp[0]
            if all(entities.get(k) == v for k, v in cent.items()):
                found.append(candidate)
        if here == root or here.parent == here:
            break
        here = here.parent
    return list(reversed(found))


def sidecar_metadata(path: Path) -> list[Triple]:
    """Fields of the merged BIDS JSON sidecar(s) of ``path`` (nearer files override).

    Scalars become text values (numeric ones are queryable as numbers); lists and objects
    become compact JSON; values longer than the AVU limit are left out.  Units come from
    :data:`SIDECAR_UNITS`.  Fields named like an identifying DICOM attribute of PS3.15
    Annex E (:data:`DICOM_ANNEX_E`, e.g. ``AcquisitionTime``, ``PatientName`` as dcm2niix
    writes them) are left out too.
    """
    merged: dict[str, Any] = {}
    for sidecar in sidecar_files(path):
        try:
            content = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(content, dict):
            merged.update(content)
    triples = []
    for key, value in merged.items():
        if value is None or not isinstance(key, str) or not key or key in DICOM_ANNEX_E:
            continue
        text = format_value(value)
        if len(text) > MAX_VALUE or len(key) > MAX_ATTRIBUTE or "\x00" in key + text:
            continue
        triples.append(make_triple(key, value, SIDECAR_UNITS.get(key), "sidecar"))
    return triples


# ---------------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------------
def is_nifti_name(name: str) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names."""
    low = name.lower()
    return low.endswith(".nii") or low.endswith(".nii.gz")


def nifti_metadata(path: Path) -> list[Triple]:
    """Header facts of a NIfTI file, from :func:`neuroscale.io.nifti.read_nifti_info`.

    ``shape`` (``80x80x35x156``), ``ndim``, ``n_volumes`` (4D only), ``voxel_size``
    (``3x3x3.3``, mm) and its components ``voxel_x``/``voxel_y``/``voxel_z`` (mm), ``tr``
    (seconds, from ``pixdim[4]`` and the time unit) and ``dtype`` (on-disk numpy type).
    A file whose header is invalid gets ``nifti_error`` instead.
    """
    from neuroscale.errors import NeuroscaleError
    from neuroscale.io.nifti import read_nifti_info

    try:
        info = read_nifti_info(path)
    except NeuroscaleError as exc:
        return [make_triple("nifti_error", str(exc)[:MAX_VALUE], None, "nifti")]
    zooms = [float(z) for z in info.zooms[:3]]
    triples = [
        make_triple("shape", "x".join(str(s) for s in info.shape), None, "nifti"),
        make_triple("ndim", info.ndim, None, "nifti"),
        make_triple(
            "voxel_size", "x".join(format_value(round(z, 6)) for z in zooms), "mm", "nifti"
        ),
        make_triple("dtype", info.dtype.newbyteorder("=").name, None, "nifti"),
    ]
    for axis, zoom in zip("xyz", zooms, strict=False):
        triples.append(make_triple(f"voxel_{axis}", round(zoom, 6), "mm", "nifti"))
    if info.ndim >= 4:
        triples.append(make_triple("n_volumes", info.shape[3], None, "nifti"))
    if info.t_r_header is not None:
        triples.append(make_triple("tr", round(info.t_r_header, 9), "s", "nifti"))
    return triples


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------
#: Series-level acquisition tags kept from DICOM files (none is in PS3.15 Annex E).
DICOM_SERIES_TAGS: dict[str, str | None] = {
    "Modality": None,
    "Manufacturer": None,
    "ManufacturerModelName": None,
    "MagneticFieldStrength": "T",
    "SeriesNumber": None,
    "ScanningSequence": None,
    "SequenceVariant": None,
    "ScanOptions": None,
    "SequenceName": None,
    "MRAcquisitionType": None,
    "ImageType": None,
    "RepetitionTime": "ms",
    "EchoTime": "ms",
    "InversionTime": "ms",
    "FlipAngle": "deg",
    "SliceThickness": "mm",
    "SpacingBetweenSlices": "mm",
    "PixelSpacing": "mm",
    "Rows": None,
    "Columns": None,
    "EchoTrainLength": None,
    "NumberOfTemporalPositions": None,
    "ImagingFrequency": "MHz",
    "PixelBandwidth": "Hz/px",
    "AcquisitionMatrix": None,
    "InPlanePhaseEncodingDirection": None,
    "BitsStored": None,
    "PhotometricInterpretation": None,
    "SOPClassUID": None,
}

#: Attributes of DICOM PS3.15 (2024) Annex E, Table E.1-1 ("Application Level Confidentiality
#: Profile Attributes") that could appear at series level: never stored by the catalog, even
#: if a future edit adds them to :data:`DICOM_SERIES_TAGS` (a test checks the two are disjoint).
DICOM_ANNEX_E: frozenset[str] = frozenset(
    {
        "AccessionNumber", "AcquisitionComments", "AcquisitionContextSequence",
        "AcquisitionDate", "AcquisitionDateTime", "AcquisitionDeviceProcessingDescription",
        "AcquisitionProtocolDescription", "AcquisitionTime", "ActualHumanPerformersSequence",
        "AdditionalPatientHistory", "AdmissionID", "AdmittingDate", "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription", "AdmittingTime", "Allergies", "Arbitrary",
        "AuthorObserverSequence", "BranchOfService", "CassetteID", "CommentsOnThePerformedProcedureStep",
        "ConfidentialityConstraintOnPatientDataDescription", "ContentCreatorName",
        "ContentCreatorIdentificationCodeSequence", "ContentDate", "ContentSequence", "ContentTime",
        "ContrastBolusAgent", "ContributionDescription", "CountryOfResidence", "CurrentPatientLocation",
        "CurveDate", "CurveTime", "CustodialOrganizationSequence", "DataSetTrailingPadding",
        "DerivationDescription", "DetectorID", "DeviceDescription", "DeviceSerialNumber",
        "DeviceUID", "DigitalSignaturesSequence", "DischargeDiagnosisDescription",
        "DistributionAddress", "DistributionName", "DoseReferenceUID", "EthnicGroup",
        "FailedSOPInstanceUIDList", "FiducialUID", "FillerOrderNumberImagingServiceRequest",
        "FrameComments", "FrameOfReferenceUID", "GantryID", "GeneratorID", "GraphicAnnotationSequence",
        "HumanPerformerName", "HumanPerformerOrganization", "IconImageSequence",
        "IdentifyingComments", "ImageComments", "ImagePresentationComments",
        "ImagingServiceRequestComments", "Impressions", "InstanceCreationDate",
        "InstanceCreationTime", "InstanceCreatorUID", "InstitutionAddress",
        "InstitutionCodeSequence", "InstitutionName", "InstitutionalDepartmentName",
        "InsurancePlanIdentification", "IntendedRecipientsOfResultsIdentificationSequence",
        "InterpretationApproverSequence", "InterpretationAuthor", "InterpretationDiagnosisDescription",
        "InterpretationIDIssuer", "InterpretationRecorder", "InterpretationText",
        "InterpretationTranscriber", "IrradiationEventUID", "IssuerOfAdmissionID",
        "IssuerOfPatientID", "IssuerOfServiceEpisodeID", "LastMenstrualDate", "MAC",
        "MediaStorageSOPInstanceUID", "MedicalAlerts", "MedicalRecordLocator", "MilitaryRank",
        "ModifiedAttributesSequence", "ModifiedImageDescription", "ModifyingDeviceID",
        "ModifyingDeviceManufacturer", "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults",
        "Occupation", "OperatorIdentificationSequence", "OperatorsName", "OriginalAttributesSequence",
        "OrderCallbackPhoneNumber", "OrderEnteredBy", "OrderEntererLocation", "OtherPatientIDs",
        "OtherPatientIDsSequence", "OtherPatientNames", "OverlayDate", "OverlayTime",
        "ParticipantSequence", "PatientAddress", "PatientAge", "PatientBirthDate",
        "PatientBirthName", "PatientBirthTime", "PatientComments", "PatientID",
        "PatientInsurancePlanCodeSequence", "PatientMotherBirthName", "PatientName",
        "PatientPrimaryLanguageCodeSequence", "PatientPrimaryLanguageModifierCodeSequence",
        "PatientReligiousPreference", "PatientSex", "PatientSexNeutered", "PatientSize",
        "PatientState", "PatientTelephoneNumbers", "PatientTransportArrangements",
        "PatientWeight", "PerformedLocation", "PerformedProcedureStepDescription",
        "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
        "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "PerformedStationAETitle",
        "PerformedStationGeographicLocationCodeSequence", "PerformedStationName",
        "PerformedStationNameCodeSequence", "PerformingPhysicianIdentificationSequence",
        "PerformingPhysicianName", "PersonAddress", "PersonIdentificationCodeSequence",
        "PersonName", "PersonTelephoneNumbers", "PhysicianApprovingInterpretation",
        "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
        "PhysiciansReadingStudyIdentificationSequence", "PlacerOrderNumberImagingServiceRequest",
        "PlateID", "PreMedication", "PregnancyStatus", "ProtocolName",
        "ReasonForTheImagingServiceRequest", "ReasonForStudy", "ReferencedDigitalSignatureSequence",
        "ReferencedImageSequence", "ReferencedPatientAliasSequence", "ReferencedPatientSequence",
        "ReferencedPerformedProcedureStepSequence", "ReferencedSOPInstanceMACSequence",
        "ReferencedSOPInstanceUID", "ReferencedStudySequence", "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence", "ReferringPhysicianName",
        "ReferringPhysicianTelephoneNumbers", "RegionOfResidence", "RelatedFrameOfReferenceUID",
        "RequestAttributesSequence", "RequestedContrastAgent", "RequestedProcedureComments",
        "RequestedProcedureDescription", "RequestedProcedureID", "RequestedProcedureLocation",
        "RequestedSOPInstanceUID", "RequestingPhysician", "RequestingService",
        "ResponsibleOrganization", "ResponsiblePerson", "ResultsComments",
        "ResultsDistributionListSequence", "ResultsIDIssuer", "ScheduledHumanPerformersSequence",
        "ScheduledPatientInstitutionResidence", "ScheduledPerformingPhysicianIdentificationSequence",
        "ScheduledPerformingPhysicianName", "ScheduledProcedureStepEndDate",
        "ScheduledProcedureStepEndTime", "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepLocation", "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime", "ScheduledStationAETitle",
        "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationName",
        "ScheduledStationNameCodeSequence", "ScheduledStudyLocation", "ScheduledStudyLocationAETitle",
        "SeriesDate", "SeriesDescription", "SeriesInstanceUID", "SeriesTime", "ServiceEpisodeDescription",
        "ServiceEpisodeID", "SmokingStatus", "SOPInstanceUID", "SourceImageSequence",
        "SpecialNeeds", "StationName", "StorageMediaFileSetUID", "StudyComments", "StudyDate",
        "StudyDescription", "StudyID", "StudyIDIssuer", "StudyInstanceUID", "StudyTime",
        "SynchronizationFrameOfReferenceUID", "TemplateExtensionCreatorUID",
        "TemplateExtensionOrganizationUID", "TextComments", "TextString", "TimezoneOffsetFromUTC",
        "TopicAuthor", "TopicKeywords", "TopicSubject", "TopicTitle", "TransactionUID", "UID",
        "VerifyingObserverIdentificationCodeSequence", "VerifyingObserverName",
        "VerifyingObserverSequence", "VerifyingOrganization", "VisitComments",
    }
)  # fmt: skip


def looks_like_dicom(path: Path, content: bytes | None = None) -> bool:
    """True when ``path`` has the DICOM Part 10 preamble ('DICM' at byte 128) or a .dcm name
    (``content``: the file's bytes when the caller already read them)."""
    if path.suffix.lower() in {".dcm", ".ima"}:
        return True
    if content is not None:
        return content[128:132] == b"DICM"
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_metadata(path: Path) -> list[Triple]:
    """Series-level tags of a DICOM file (:data:`DICOM_SERIES_TAGS`), never Annex E ones.

    Needs pydicom (the ``[catalog]`` extra); pixel data are not read.  Multi-valued tags
    become compact JSON lists.
    """
    from neuroscale.catalog._deps import require

    pydicom = require("pydicom", "DICOM metadata extraction")
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=False)
    except Exception as exc:  # pydicom raises InvalidDicomError and friends
        return [make_triple("dicom_error", str(exc)[:200], None, "dicom")]
    triples = []
    for keyword, unit in DICOM_SERIES_TAGS.items():
        if keyword in DICOM_ANNEX_E:
            continue
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue) or isinstance(value, list | tuple):
            plain: Any = [_dicom_scalar(v) for v in value]
        else:
            plain = _dicom_scalar(value)
        if plain in ("", []):
            continue
        text = format_value(plain)
        if len(text) <= MAX_VALUE:
            triples.append(make_triple(keyword, plain, unit, "dicom"))
    return triples


def _dicom_scalar(value: Any) -> Any:
    for kind in (int, float):
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def extract(path: Path, content: bytes | None = None) -> list[Triple]:
    """All automatic metadata for the file ``path`` (BIDS, sidecar, NIfTI, DICOM).

    ``content`` is the whole file when the caller already read it (saves a read for the
    DICOM check).  Extraction problems never fail an ingest: an unreadable header becomes an
    ``nifti_error``/``dicom_error`` attribute.
    """
    triples: list[Triple] = []
    triples.extend(bids_metadata(path))
    if is_nifti_name(path.name):
        triples.extend(nifti_metadata(path))
        triples.extend(sidecar_metadata(path))
    elif looks_like_dicom(path, content):
        triples.extend(dicom_metadata(path))
    return dedupe(triples)


def dedupe(triples: Iterable[Triple]) -> list[Triple]:
    """Drop repeated (attribute, value, unit) triples, keeping the first."""
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for t in triples:
        key = (t.attribute, t.value, t.unit)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out
