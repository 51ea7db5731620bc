"""The pipeline's data: users, PACS sources, studies and series, routing, jobs, results, the FHIR and PACS
outboxes, governance and shadow models. One module per concern; every model is importable from ``triage.models``."""

from __future__ import annotations

from triage.models.core import (
    AuditEvent,
    DicomWebSource,
    Finding,
    ReportStatus,
    Role,
    Series,
    Study,
    User,
    Verdict,
)
from triage.models.delivery import (
    FhirAuth,
    FhirEndpoint,
    OutboxMessage,
    OutboxState,
    WorkerHeartbeat,
    WritebackMessage,
    WritebackState,
)
from triage.models.governance import (
    AlertKind,
    DateOption,
    ExportState,
    GroundTruth,
    GroundTruthSource,
    ModelAlert,
    ValidationExport,
)
from triage.models.pipeline import (
    ACTIVE_JOB_STATES,
    FINAL_JOB_STATES,
    ContrastRequirement,
    JobState,
    ModelConfig,
    RoutingRule,
    ThresholdOverride,
    TriageJob,
    TriageResult,
)
from triage.models.shadow import ShadowModel, ShadowResult, ShadowRunStatus, ShadowState

__all__ = [
    "Role",
    "Finding",
    "Verdict",
    "ReportStatus",
    "User",
    "AuditEvent",
    "DicomWebSource",
    "Study",
    "Series",
    "ContrastRequirement",
    "RoutingRule",
    "ModelConfig",
    "ThresholdOverride",
    "JobState",
    "ACTIVE_JOB_STATES",
    "FINAL_JOB_STATES",
    "TriageJob",
    "TriageResult",
    "FhirAuth",
    "FhirEndpoint",
    "OutboxState",
    "OutboxMessage",
    "WritebackState",
    "WritebackMessage",
    "WorkerHeartbeat",
    "GroundTruthSource",
    "GroundTruth",
    "AlertKind",
    "ModelAlert",
    "DateOption",
    "ExportState",
    "ValidationExport",
    "ShadowState",
    "ShadowModel",
    "ShadowRunStatus",
    "ShadowResult",
]
