"""Where queued tasks stored before the layered layout find their function.

django-tasks stores each task's dotted path in its row (``triage.tasks.triage_job_process``); rows queued by an
earlier release must still run after an upgrade.
"""

from __future__ import annotations

from triage.ingest.tasks import triage_job_process

__all__ = ["triage_job_process"]
