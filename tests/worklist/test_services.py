"""Worklist services on the database: sync, claims, acknowledgement, pins, feedback, escalation, events."""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory
from triage.core.exceptions import Conflict, InvalidInput, NotFound
from triage.models import AuditEvent
from worklist import selectors, services
from worklist.models import Feedback, ItemStatus, WorklistEventCounter, WorklistItem

pytestmark = pytest.mark.django_db


def uid(item: WorklistItem) -> str:
    return item.study.study_instance_uid


def test_sync_creates_critical_item_from_positive_result(make_study):
    item = make_study(ich=0.93)
    assert (item.critical, item.status, item.critical_at is not None) == (True, ItemStatus.WAITING, True)


def test_sync_of_negative_result_is_not_critical(make_study):
    assert make_study(ich=0.2).critical is False


def test_a_positive_finding_outside_the_validated_range_is_shown_but_raises_no_priority(make_study):
    item = make_study(ich=0.2)
    outside = {"in_range": False, "reasons": ["brain HU 79 is above the validated 55"], "stats": {}}
    item.study.results.update(is_current=False)
    ResultFactory(series=item.study.series.first(), score=0.97, details={"input_check": outside})

    synced = services.worklist_item_sync(study=item.study)
    (finding,) = selectors.worklist_item_for_payload(item_id=synced.pk).study.current_results

    assert (synced.critical, synced.sort_key) == (False, make_study(ich=0.2).sort_key)
    assert (finding.positive, finding.in_validated_range) == (True, False)


def test_sync_reads_stat_from_requested_priority(make_study):
    assert make_study(requested_priority="STAT").urgency == 3


def test_sync_twice_keeps_one_item(make_study):
    item = make_study(ich=0.9)
    services.worklist_item_sync(study=item.study)
    assert WorklistItem.objects.filter(study=item.study).count() == 1


def test_sync_follows_a_new_current_result(make_study):
    item = make_study(ich=0.9)
    item.study.results.update(is_current=False)
    ResultFactory(series=item.study.series.first(), score=0.1)
    assert services.worklist_item_sync(study=item.study).critical is False


def test_sync_inside_outer_transaction_broadcasts_after_commit(django_capture_on_commit_callbacks):
    study = StudyFactory()
    with (
        mock.patch("worklist.events.broadcast") as broadcast,
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        services.worklist_item_sync(study=study)
        assert broadcast.call_count == 0
    assert (len(callbacks), broadcast.call_args.args[0]["kind"]) == (1, "added")


def test_every_event_takes_the_next_sequence_number(make_study, radiologist, django_capture_on_commit_callbacks):
    item = make_study(ich=0.9)
    with (
        mock.patch("worklist.events.broadcast") as broadcast,
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
        services.worklist_item_release(study_instance_uid=uid(item), user=radiologist)
    seqs = [c.args[0]["seq"] for c in broadcast.call_args_list]
    assert seqs == [seqs[0], seqs[0] + 1]
    assert WorklistEventCounter.objects.get().value == seqs[1]


def test_event_payload_carries_rank_and_findings(make_study, django_capture_on_commit_callbacks):
    make_study(ich=0.2)
    with mock.patch("worklist.events.broadcast") as broadcast, django_capture_on_commit_callbacks(execute=True):
        make_study(ich=0.95)
    payload = broadcast.call_args.args[0]["item"]
    assert (payload["rank"], payload["findings"][0]["score"], payload["findings"][0]["advisory"]) == (1, 0.95, True)


def test_claim_sets_in_progress_and_audits(make_study, radiologist):
    item = services.worklist_item_claim(study_instance_uid=uid(make_study()), user=radiologist)
    audit = AuditEvent.objects.get(action="worklist.claim")
    assert (item.status, item.claimed_by, audit.actor) == (ItemStatus.IN_PROGRESS, radiologist, radiologist)


def test_second_claim_by_someone_else_conflicts(make_study, radiologist, rad2):
    item = make_study()
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    with pytest.raises(Conflict, match="Another radiologist"):
        services.worklist_item_claim(study_instance_uid=uid(item), user=rad2)


def test_claim_again_by_holder_is_idempotent(make_study, radiologist):
    item = make_study()
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    assert AuditEvent.objects.filter(action="worklist.claim").count() == 1


def test_claim_of_unknown_study_is_not_found(radiologist):
    with pytest.raises(NotFound):
        services.worklist_item_claim(study_instance_uid="1.2.3", user=radiologist)


def test_release_by_other_radiologist_conflicts(make_study, radiologist, rad2):
    item = make_study()
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    with pytest.raises(Conflict):
        services.worklist_item_release(study_instance_uid=uid(item), user=rad2)


def test_release_returns_item_to_waiting(make_study, radiologist):
    item = make_study()
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    item = services.worklist_item_release(study_instance_uid=uid(item), user=radiologist)
    assert (item.status, item.claimed_by) == (ItemStatus.WAITING, None)


def test_report_closes_item_and_blocks_claims(make_study, radiologist, rad2):
    item = make_study()
    services.worklist_item_report(study_instance_uid=uid(item), user=radiologist)
    with pytest.raises(Conflict, match="already been reported"):
        services.worklist_item_claim(study_instance_uid=uid(item), user=rad2)


def test_acknowledge_records_time_to_acknowledge(make_study, radiologist):
    item = make_study(ich=0.9)
    WorklistItem.objects.filter(pk=item.pk).update(critical_at=timezone.now() - timedelta(seconds=90))
    services.worklist_item_acknowledge(study_instance_uid=uid(item), user=radiologist)
    audit = AuditEvent.objects.get(action="worklist.acknowledge")
    assert 89 <= audit.data["seconds_to_acknowledge"] <= 120


def test_acknowledge_without_critical_finding_conflicts(make_study, radiologist):
    with pytest.raises(Conflict, match="no critical finding"):
        services.worklist_item_acknowledge(study_instance_uid=uid(make_study(ich=0.1)), user=radiologist)


def test_new_critical_finding_needs_a_new_acknowledgement(make_study, radiologist):
    item = make_study(ich=0.9)
    services.worklist_item_acknowledge(study_instance_uid=uid(item), user=radiologist)
    series = item.study.series.first()
    for score in (0.1, 0.8):
        item.study.results.update(is_current=False)
        ResultFactory(series=series, score=score)
        item = services.worklist_item_sync(study=item.study)
    assert (item.critical, item.acknowledged_at) == (True, None)


def _add_result(item: WorklistItem, *, finding: str, score: float) -> WorklistItem:
    """A new current result for ``finding``, as results_record writes it, then the sync it runs."""
    item.study.results.filter(finding=finding).update(is_current=False)
    series = SeriesFactory(study=item.study)
    ResultFactory(series=series, finding=finding, score=score, model_name=finding)
    return services.worklist_item_sync(study=item.study)


def test_a_positive_cta_after_an_acknowledged_ich_alerts_afresh(make_study, radiologist):
    item = make_study(ich=0.9)
    services.worklist_item_acknowledge(study_instance_uid=uid(item), user=radiologist)
    WorklistItem.objects.filter(pk=item.pk).update(
        critical_at=timezone.now() - timedelta(hours=1), escalated_at=timezone.now()
    )
    before = timezone.now()

    item = _add_result(item, finding="lvo", score=0.9)

    assert (item.critical, item.acknowledged_at, item.acknowledged_by, item.escalated_at) == (True, None, None, None)
    assert item.critical_at >= before
    assert item.critical_findings == ["ich", "lvo"]


def test_a_finding_that_stays_positive_keeps_its_acknowledgement(make_study, radiologist):
    item = make_study(ich=0.9)
    services.worklist_item_acknowledge(study_instance_uid=uid(item), user=radiologist)

    item = _add_result(item, finding="ich", score=0.95)

    assert (item.critical, item.acknowledged_by) == (True, radiologist)


def test_a_negative_cta_after_an_acknowledged_ich_keeps_the_acknowledgement(make_study, radiologist):
    item = make_study(ich=0.9)
    services.worklist_item_acknowledge(study_instance_uid=uid(item), user=radiologist)

    item = _add_result(item, finding="lvo", score=0.1)

    assert item.acknowledged_by == radiologist


def test_a_reported_study_with_a_new_critical_finding_is_reopened(
    make_study, radiologist, django_capture_on_commit_callbacks
):
    item = make_study(ich=0.9)
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    services.worklist_item_report(study_instance_uid=uid(item), user=radiologist)

    with mock.patch("worklist.events.broadcast") as broadcast, django_capture_on_commit_callbacks(execute=True):
        item = _add_result(item, finding="lvo", score=0.9)

    assert (item.status, item.claimed_by, item.reported_at, item.acknowledged_at) == (
        ItemStatus.WAITING,
        None,
        None,
        None,
    )
    audit = AuditEvent.objects.get(action="worklist.reopened")
    assert (audit.data["new_findings"], audit.data["previous_reporter_id"]) == (["lvo"], radiologist.pk)
    event = broadcast.call_args.args[0]
    assert {"status", "claim"} <= set(event["changes"])
    assert event["item"]["status"] == "waiting"


def test_a_reported_study_whose_finding_is_only_rescored_stays_reported(make_study, radiologist):
    item = make_study(ich=0.9)
    services.worklist_item_report(study_instance_uid=uid(item), user=radiologist)

    item = _add_result(item, finding="ich", score=0.97)

    assert item.status == ItemStatus.REPORTED
    assert not AuditEvent.objects.filter(action="worklist.reopened").exists()


def test_a_new_alert_escalates_and_notifies_afresh(make_study, settings, webhook):
    settings.TRIAGE_ESCALATION_WEBHOOK_URL = webhook.url
    item = make_study(ich=0.9)
    later = timezone.now() + timedelta(hours=1)
    services.worklist_items_escalate(now=later)
    services.worklist_escalations_notify(now=later)
    item = _add_result(item, finding="lvo", score=0.9)
    assert (item.escalation_notified_at, item.escalation_attempts) == (None, 0)

    much_later = timezone.now() + timedelta(hours=2)
    services.worklist_items_escalate(now=much_later)
    services.worklist_escalations_notify(now=much_later)

    assert len(webhook.bodies) == 2
    assert {f["finding"] for f in webhook.bodies[1]["findings"]} == {"ich", "lvo"}


# Who may do what on a study another radiologist has claimed (docs/architecture.md)


def test_anyone_may_acknowledge_a_study_another_has_claimed_and_it_is_audited(make_study, radiologist, rad2):
    item = make_study(ich=0.9)
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)

    item = services.worklist_item_acknowledge(study_instance_uid=uid(item), user=rad2)

    audit = AuditEvent.objects.get(action="worklist.acknowledge")
    assert (item.acknowledged_by, item.claimed_by) == (rad2, radiologist)
    assert (audit.actor_id, audit.data["claimed_by_id"], audit.data["claimed_by_other"]) == (
        rad2.pk,
        radiologist.pk,
        True,
    )


def test_any_radiologist_may_pin_a_study_another_has_claimed_and_it_is_audited(make_study, radiologist, rad2):
    item = make_study(ich=0.2)
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)

    item = services.worklist_item_pin(study_instance_uid=uid(item), user=rad2, level=3)

    audit = AuditEvent.objects.get(action="worklist.pin")
    assert (item.pinned_priority, item.pinned_by, item.claimed_by) == (3, rad2, radiologist)
    assert (audit.data["claimed_by_id"], audit.data["claimed_by_other"]) == (radiologist.pk, True)


def test_an_admin_may_release_a_study_another_has_claimed(make_study, radiologist, admin_user):
    item = make_study(ich=0.9)
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)

    item = services.worklist_item_release(study_instance_uid=uid(item), user=admin_user)

    audit = AuditEvent.objects.get(action="worklist.release")
    assert (item.status, audit.actor_id, audit.data["previous_claimer_id"]) == (
        ItemStatus.WAITING,
        admin_user.pk,
        radiologist.pk,
    )


def test_nobody_but_the_claimer_may_report_a_claimed_study(make_study, radiologist, rad2, admin_user):
    item = make_study(ich=0.9)
    services.worklist_item_claim(study_instance_uid=uid(item), user=radiologist)
    for other in (rad2, admin_user):
        with pytest.raises(Conflict, match="Another radiologist"):
            services.worklist_item_report(study_instance_uid=uid(item), user=other)


def test_pin_is_kept_when_ai_result_arrives(make_study, radiologist):
    item = make_study()
    services.worklist_item_pin(study_instance_uid=uid(item), user=radiologist, level=0)
    ResultFactory(series=SeriesFactory(study=item.study), score=0.99)
    item = services.worklist_item_sync(study=item.study)
    assert (item.pinned_priority, item.sort_key // 1_000_000, item.critical) == (0, 0, True)


def test_pin_outside_levels_is_refused(make_study, radiologist):
    with pytest.raises(InvalidInput):
        services.worklist_item_pin(study_instance_uid=uid(make_study()), user=radiologist, level=7)


def test_feedback_is_tied_to_model_version_and_replaced_on_change(make_study, radiologist):
    item = make_study(ich=0.9)
    result = item.study.results.get()
    services.result_feedback_set(result_id=result.pk, user=radiologist, verdict="agree")
    with mock.patch("worklist.services._report_disagreement"):
        services.result_feedback_set(result_id=result.pk, user=radiologist, verdict="unsure", comment="motion")
    feedback = Feedback.objects.get()
    assert (feedback.verdict, feedback.comment, feedback.model_version) == ("unsure", "motion", "0.1.0")


def test_disagreement_queues_an_amended_report(make_study, radiologist):
    item = make_study(ich=0.9)
    result = item.study.results.get()
    with mock.patch("worklist.services._report_disagreement") as report:
        services.result_feedback_set(result_id=result.pk, user=radiologist, verdict="disagree")
    assert report.call_args.kwargs["result"] == result


def test_feedback_with_unknown_verdict_is_refused(make_study, radiologist):
    result = make_study(ich=0.9).study.results.get()
    with pytest.raises(InvalidInput):
        services.result_feedback_set(result_id=result.pk, user=radiologist, verdict="maybe")


def test_resync_updates_items_after_threshold_change(make_study):
    item = make_study(ich=0.6, threshold=0.5)
    item.study.results.update(threshold=0.7, positive=False)
    count = services.worklist_items_resync(finding="ich")
    item.refresh_from_db()
    assert (count, item.critical) == (1, False)


def test_resync_skips_other_findings(make_study):
    make_study(ich=0.6)
    assert services.worklist_items_resync(finding="lvo") == 0


def test_unacknowledged_critical_finding_escalates_once(make_study, settings, webhook):
    settings.TRIAGE_ESCALATION_WEBHOOK_URL = webhook.url
    item = make_study(ich=0.9)
    later = timezone.now() + timedelta(minutes=settings.TRIAGE_ACK_TIMEOUT_MINUTES + 1)
    first = services.worklist_items_escalate(now=later)
    second = services.worklist_items_escalate(now=later)
    notified = services.worklist_escalations_notify(now=later)
    body = webhook.bodies[0]
    assert (first, second, notified, body["item_id"], body["findings"][0]["finding"]) == (
        [item.pk],
        [],
        [item.pk],
        item.pk,
        "ich",
    )


def test_escalation_body_holds_no_patient_data(make_study, settings, webhook):
    settings.TRIAGE_ESCALATION_WEBHOOK_URL = webhook.url
    item = make_study(ich=0.9)
    later = timezone.now() + timedelta(hours=1)
    services.worklist_items_escalate(now=later)
    services.worklist_escalations_notify(now=later)
    text = str(webhook.bodies)
    study = item.study
    assert not any(v in text for v in (study.patient_id, study.patient_name, study.accession_number))


def _escalated(make_study, settings, url: str):
    settings.TRIAGE_ESCALATION_WEBHOOK_URL = url
    item = make_study(ich=0.9)
    later = timezone.now() + timedelta(hours=1)
    services.worklist_items_escalate(now=later)
    return item, later


def test_an_escalation_is_notified_only_when_the_webhook_answers_2xx(make_study, settings, webhook):
    webhook.statuses = [503]
    item, later = _escalated(make_study, settings, webhook.url)

    notified = services.worklist_escalations_notify(now=later)

    item.refresh_from_db()
    assert (notified, item.escalation_notified_at, item.escalation_error) == ([], None, "HTTP 503")
    assert item.escalation_next_at >= later + timedelta(seconds=services.ESCALATION_NOTIFY_BACKOFF_SECONDS)


def test_a_failed_escalation_post_is_retried_with_backoff_until_it_lands(make_study, settings, webhook):
    webhook.statuses = [500, 502]
    item, now = _escalated(make_study, settings, webhook.url)
    rounds = []
    for _ in range(3):
        rounds.append(services.worklist_escalations_notify(now=now))
        item.refresh_from_db()
        now = item.escalation_next_at or now

    assert (rounds, len(webhook.bodies), item.escalation_attempts) == ([[], [], [item.pk]], 3, 3)
    assert item.escalation_notified_at is not None
    assert AuditEvent.objects.filter(action="worklist.escalation_notified").count() == 1


def test_a_retry_is_not_sent_before_its_backoff(make_study, settings, webhook):
    webhook.statuses = [503]
    item, later = _escalated(make_study, settings, webhook.url)
    services.worklist_escalations_notify(now=later)

    again = services.worklist_escalations_notify(now=later + timedelta(seconds=1))

    assert (again, len(webhook.bodies)) == ([], 1)


def test_an_unreachable_webhook_gives_up_after_the_bounded_attempts_and_says_so(make_study, settings, caplog):
    from tools.procs import free_port

    item, now = _escalated(make_study, settings, f"http://127.0.0.1:{free_port()}/hook")
    for _ in range(services.ESCALATION_NOTIFY_MAX_ATTEMPTS + 2):
        services.worklist_escalations_notify(now=now)
        item.refresh_from_db()
        now = item.escalation_next_at or now

    assert item.escalation_attempts == services.ESCALATION_NOTIFY_MAX_ATTEMPTS
    assert (item.escalation_unnotified, item.escalation_next_at, item.escalated_at is not None) == (True, None, True)
    assert item.escalation_error.startswith("Network error: ConnectionError")
    assert AuditEvent.objects.filter(action="worklist.escalation_unnotified").count() == 1
    assert f"escalation webhook for item {item.pk} gave up" in caplog.text


def test_escalation_logs_hold_no_patient_data(make_study, settings, webhook, caplog):
    webhook.statuses = [503]
    item, later = _escalated(make_study, settings, webhook.url)
    services.worklist_escalations_notify(now=later)
    study = item.study
    assert not any(v in caplog.text for v in (study.patient_id, study.patient_name, study.accession_number))


def test_acknowledged_finding_does_not_escalate(make_study, radiologist):
    item = make_study(ich=0.9)
    services.worklist_item_acknowledge(study_instance_uid=uid(item), user=radiologist)
    assert services.worklist_items_escalate(now=timezone.now() + timedelta(hours=1)) == []


def test_finding_not_yet_due_does_not_escalate(make_study):
    make_study(ich=0.9)
    assert services.worklist_items_escalate() == []


def test_study_view_is_audited(make_study, radiologist):
    item = make_study(ich=0.9)
    services.study_view_record(study=item.study, user=radiologist)
    assert AuditEvent.objects.get(action="study.view").data["item_id"] == item.pk


def test_rank_matches_position_in_list(make_study, radiologist):
    items = [make_study(ich=s) for s in (0.1, 0.95, 0.7, None)]
    listed = list(selectors.worklist_items(user=radiologist))
    ranks = [selectors.worklist_item_rank(item=i) for i in listed]
    assert ranks == [1, 2, 3, 4]
    assert listed[0].pk == items[1].pk


def test_starving_item_is_listed_before_flagged_one(make_study, radiologist, settings):
    old = make_study(received_at=timezone.now() - timedelta(minutes=settings.TRIAGE_MAX_WAIT_MINUTES + 5))
    make_study(ich=0.99)
    assert next(iter(selectors.worklist_items(user=radiologist))).pk == old.pk


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_radiologists_claiming_at_once_exactly_one_wins():
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL")
    item = services.worklist_item_sync(study=StudyFactory())
    users = [UserFactory(username="race1"), UserFactory(username="race2")]
    barrier, outcomes = threading.Barrier(2, timeout=10), []

    def claim(user):
        try:
            barrier.wait()
            services.worklist_item_claim(study_instance_uid=uid(item), user=user)
            outcomes.append("won")
        except Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(outcomes) == ["conflict", "won"]


def test_escalate_command_once_escalates_notifies_and_beats(make_study, settings, webhook):
    from django.core.management import call_command

    from triage.models import WorkerHeartbeat

    settings.TRIAGE_ESCALATION_WEBHOOK_URL = webhook.url
    item = make_study(ich=0.9)
    WorklistItem.objects.filter(pk=item.pk).update(critical_at=timezone.now() - timedelta(hours=1))
    call_command("triage_escalate", "--once")
    item.refresh_from_db()
    assert (item.escalated_at is not None, item.escalation_notified_at is not None) == (True, True)
    assert [b["item_id"] for b in webhook.bodies] == [item.pk]
    assert WorkerHeartbeat.objects.filter(kind="escalate").exists()


def test_disagreement_reaches_the_fhir_outbox(make_study, radiologist, settings):
    from triage.fhir.outbox import endpoint_ensure_from_env
    from triage.models import OutboxMessage

    settings.TRIAGE_FHIR_BASE_URL = "http://127.0.0.1:9/fhir"
    endpoint_ensure_from_env()
    result = make_study(ich=0.9).study.results.get()
    services.result_feedback_set(result_id=result.pk, user=radiologist, verdict="disagree")
    assert OutboxMessage.objects.filter(study=result.study, finding="ich").exists()
