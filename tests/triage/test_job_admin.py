from __future__ import annotations

import pytest

from tests.factories import JobFactory
from triage.models import AuditEvent, JobState, TriageJob


@pytest.mark.django_db
def test_admin_retry_requeues_a_failed_job_and_audits_it(client, admin_user, django_capture_on_commit_callbacks):
    job = JobFactory(state=JobState.FAILED, attempts=6, error_code="model_unavailable")
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post("/admin/triage/triagejob/", {"action": "retry", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert (job.state, job.attempts, job.error_code) == (JobState.QUEUED, 0, "")
    assert len(callbacks) == 1
    assert AuditEvent.objects.filter(action="job.retried", object_id=str(job.pk), actor=admin_user).exists()


@pytest.mark.django_db
def test_admin_retry_leaves_a_done_job_alone(client, admin_user):
    job = JobFactory(state=JobState.DONE)
    client.force_login(admin_user)
    client.post("/admin/triage/triagejob/", {"action": "retry", "_selected_action": [job.pk]})
    assert TriageJob.objects.get(pk=job.pk).state == JobState.DONE
