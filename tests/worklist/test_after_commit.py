"""What runs after commit when the channel layer (Redis) is down: the change stands, the API answers 2xx, a failed
broadcast is logged, and the hooks after it (the outbox kick) still run. Real commits, so the hooks run as in
production."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from triage.fhir import outbox
from triage.models import FhirEndpoint
from worklist import services
from worklist.models import ItemStatus, WorklistItem

pytestmark = pytest.mark.django_db(transaction=True)


class DownLayer:
    """A channel layer whose sends fail once ``down`` is set, as channels_redis does when Redis is unreachable."""

    def __init__(self) -> None:
        self.down = False
        self.attempts = 0

    async def group_send(self, group: str, message: dict) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.fixture
def layer(monkeypatch) -> DownLayer:
    layer = DownLayer()
    monkeypatch.setattr("worklist.events.get_channel_layer", lambda: layer)
    return layer


@pytest.fixture
def kicks(monkeypatch) -> list[str]:
    kicked: list[str] = []

    def outbox_kick() -> None:
        kicked.append("kick")

    monkeypatch.setattr(outbox, "outbox_kick", outbox_kick)
    return kicked


def uid(item: WorklistItem) -> str:
    return item.study.study_instance_uid


def test_claim_answers_200_and_commits_while_the_channel_layer_is_down(make_study, radiologist_client, layer, caplog):
    item = make_study(ich=0.9)
    layer.down = True

    response = radiologist_client.post(f"/api/v1/studies/{uid(item)}/claim/")

    item.refresh_from_db()
    assert (response.status_code, item.status, layer.attempts) == (200, ItemStatus.IN_PROGRESS, 2)
    assert "worklist.events.broadcast" in caplog.text


def test_acknowledge_answers_200_and_commits_while_the_channel_layer_is_down(make_study, radiologist_client, layer):
    item = make_study(ich=0.9)
    layer.down = True

    response = radiologist_client.post(f"/api/v1/studies/{uid(item)}/acknowledge/")

    item.refresh_from_db()
    assert (response.status_code, item.acknowledged_at is not None) == (200, True)


def test_feedback_answers_200_and_kicks_the_outbox_while_the_channel_layer_is_down(
    make_study, radiologist_client, layer, kicks
):
    FhirEndpoint.objects.create(name="emr", base_url="http://127.0.0.1:9/fhir")
    result = make_study(ich=0.9).study.results.get()
    layer.down = True

    response = radiologist_client.post(f"/api/v1/results/{result.pk}/feedback/", {"verdict": "disagree"})

    assert (response.status_code, kicks) == (200, ["kick"])


def test_a_failed_broadcast_does_not_skip_the_outbox_kick_after_it(make_study, layer, kicks):
    """results_record's order: the worklist event, then the report; the report must still be kicked."""
    FhirEndpoint.objects.create(name="emr", base_url="http://127.0.0.1:9/fhir")
    item = make_study(ich=0.9)
    layer.down, layer.attempts = True, 0

    with transaction.atomic():
        services.worklist_item_sync(study=item.study)
        outbox.outbox_enqueue_report(study=item.study, finding="ich")

    assert (layer.attempts, kicks) == (1, ["kick"])


def test_every_escalation_is_recorded_and_broadcast_in_turn_while_the_layer_is_down(make_study, layer):
    items = [make_study(ich=0.9), make_study(ich=0.8)]
    layer.down, layer.attempts = True, 0

    escalated = services.worklist_items_escalate(now=timezone.now() + timedelta(hours=1))

    assert (sorted(escalated), layer.attempts) == (sorted(i.pk for i in items), 2)
    assert WorklistItem.objects.filter(escalated_at__isnull=False).count() == 2
