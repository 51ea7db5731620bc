"""Constants shared by the tests of the EMR side (FHIR reports and the outbox)."""

from __future__ import annotations

PATIENT_SYSTEM = "urn:oid:1.2.3.4.5.6"
