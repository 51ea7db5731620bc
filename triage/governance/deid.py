"""De-identification of one DICOM instance per DICOM PS3.15 Annex E, with pydicom/deid as the engine.

The Basic Application Confidentiality Profile is written as a deid recipe (``BASIC_PROFILE_RECIPE``) whose rules
name classes of attributes (by value representation, group and keyword), so an attribute Table E.1-1 lists but
this module does not name is still caught by its class. docs/validation-export.md explains the choices.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deid.config import DeidRecipe  # type: ignore[import-untyped]
from deid.dicom import fields as deid_fields  # type: ignore[import-untyped]
from deid.dicom.parser import DicomParser  # type: ignore[import-untyped]
from deid.logger import bot  # type: ignore[import-untyped]
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from triage.models import DateOption

# deid prints its warnings to stdout, and some of them quote an element with its value: never let it speak.
bot.level = 0

STANDARD_UID_ROOT = "1.2.840.10008."
# Shifted back by one to ten years; the offset lives only in memory for one export.
DATE_SHIFT_DAYS = (365, 3650)

# Rules apply at every nesting level (deid expands sequences). Priority: KEEP > REPLACE > JITTER > REMOVE > BLANK.
BASIC_PROFILE_RECIPE = """FORMAT dicom

%header

KEEP endswith:ClassUID
REPLACE select:VR:UI func:remap_uid
BLANK select:VR:PN
REMOVE select:group:0010
REMOVE select:group:0012
REMOVE select:group:0032
REMOVE select:group:0038
REMOVE select:group:4008
REMOVE select:VR:LT
REMOVE select:VR:ST
REMOVE select:VR:UT
REMOVE select:VR:UC
REMOVE endswith:ID
REMOVE endswith:IDs
REMOVE endswith:IdentificationSequence
REMOVE contains:OrderNumber
REMOVE AccessionNumber
REMOVE contains:Description
REMOVE contains:Comment
REMOVE contains:Address
REMOVE contains:Telephone
REMOVE contains:Telecom
REMOVE contains:Institution
REMOVE contains:Physician
REMOVE contains:Operator
REMOVE contains:Request
REMOVE contains:Station
REMOVE contains:Overlay
REMOVE contains:Trial
REMOVE startswith:PerformedProcedureStep
REMOVE startswith:ScheduledProcedureStep
REMOVE ReferencedPatientSequence
REMOVE ReferencedPatientPhotoSequence
REMOVE ReferencedStudySequence
REMOVE ReferencedPerformedProcedureStepSequence
REMOVE ProtocolName
REMOVE DeviceSerialNumber
REMOVE SoftwareVersions
REMOVE AcquisitionContextSequence
REMOVE ContentSequence
REMOVE OriginalAttributesSequence
REMOVE DigitalSignaturesSequence
REMOVE MACParametersSequence
REMOVE EncryptedAttributesSequence
"""

MODIFIED_DATES_RULES = """
JITTER select:VR:DA {days}
JITTER select:VR:DT {days}
"""

# PS3.16 CID 7050 codes, written into the instance so a reader knows what was done to it.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES = {
    DateOption.MODIFIED: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    DateOption.FULL: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
}
# De-identification Method is LO: at most 64 characters.
METHOD_TEXT = {
    DateOption.MODIFIED: "PS3.15 E Basic Profile; Rtn. Long. Modif. Dates Opt.",
    DateOption.FULL: "PS3.15 E Basic Profile; Rtn. Long. Full Dates Opt.",
}
# Type 2 attributes of the Patient and General Study modules: present (empty or a pseudonym) after removal.
TYPE_2_EMPTY = ("PatientBirthDate", "PatientSex", "StudyID", "ReferringPhysicianName", "AccessionNumber")


@dataclass
class Deidentifier:
    """One per export: a secret that keys every new UID and pseudonym, and one date offset. Neither is written out.

    ``identified`` keeps the patient's name, ID and accession number (an admin's deliberate, audited choice).
    """

    date_option: str
    identified: bool = False
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    shift_days: int = field(default_factory=lambda: -secrets.choice(range(*DATE_SHIFT_DAYS)), repr=False)
    _recipe: DeidRecipe | None = field(default=None, init=False, repr=False)

    def new_uid(self, uid: str) -> str:
        """The same original UID gives the same new UID throughout the export (a 2.25 UUID-derived UID)."""
        uid = str(uid).strip()
        if not uid or uid.startswith(STANDARD_UID_ROOT):
            return uid
        digest = hmac.new(self.secret, uid.encode(), hashlib.sha256).digest()
        return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"

    def pseudonym(self, value: str) -> str:
        digest = hmac.new(self.secret, str(value).encode(), hashlib.sha256).hexdigest()
        return f"ANON-{digest[:12].upper()}"

    def recipe(self) -> DeidRecipe:
        if self._recipe is None:
            text = BASIC_PROFILE_RECIPE
            if self.date_option == DateOption.MODIFIED:
                text += MODIFIED_DATES_RULES.format(days=self.shift_days)
            # deid reads recipes from files; the file holds the offset, so it is gone before the export goes on.
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "deid.dicom"
                path.write_text(text)
                self._recipe = DeidRecipe(deid=str(path), base=False)
        return self._recipe

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify one instance in place (private tags, sequences and all) and give it a fresh file meta."""
        originals = {k: str(ds.get(k, "")) for k in ("PatientName", "PatientID", "AccessionNumber")}
        meta = getattr(ds, "file_meta", None)
        transfer_syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        # deid walks FileDatasets only, and caches each one it walked for good: drop the cache after each instance.
        source = FileDataset("", ds, file_meta=FileMetaDataset(), preamble=b"\0" * 128)
        parser = DicomParser(source, recipe=self.recipe(), disable_skip=True)
        parser.lookup["remap_uid"] = self._remap_element
        try:
            parser.parse(remove_private=True)
        finally:
            deid_fields._get_fields_inner.cache_clear()
        out = parser.dicom
        self._fill_type_2(out, originals)
        self._mark(out)
        out.file_meta = self._file_meta(out, transfer_syntax)
        return out

    def _remap_element(self, *, field: Any, **_: Any) -> Any:
        value = field.element.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            return "\\".join(self.new_uid(v) for v in value)
        return self.new_uid(value)

    def _fill_type_2(self, ds: Dataset, originals: dict[str, str]) -> None:
        for keyword in TYPE_2_EMPTY:
            setattr(ds, keyword, "")
        if self.identified:
            ds.PatientName = originals["PatientName"]
            ds.PatientID = originals["PatientID"]
            ds.AccessionNumber = originals["AccessionNumber"]
        else:
            ds.PatientID = self.pseudonym(originals["PatientID"])
            ds.PatientName = ds.PatientID

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "NO" if self.identified else "YES"
        option_code = OPTION_CODES[DateOption(self.date_option)]
        ds.DeidentificationMethod = METHOD_TEXT[DateOption(self.date_option)]
        ds.DeidentificationMethodCodeSequence = Sequence([_code(*BASIC_PROFILE_CODE), _code(*option_code)])
        modified = self.date_option == DateOption.MODIFIED
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if modified else "UNMODIFIED"

    @staticmethod
    def _file_meta(ds: Dataset, transfer_syntax: Any) -> FileMetaDataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = UID(transfer_syntax) if transfer_syntax else ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        return meta


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def burned_in_annotation(metadata: dict) -> bool:
    """Whether one instance's DICOM JSON says its pixels carry burned-in text (0028,0301 is YES)."""
    values = (metadata.get("00280301") or {}).get("Value") or []
    return bool(values) and str(values[0]).strip().upper() == "YES"
