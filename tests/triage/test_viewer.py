"""The viewer redirect (triage/viewer.py): which series it opens, and that it needs a login."""

from __future__ import annotations

import pytest

from triage.viewer import pick_series


def series(orthanc_id: str, uid: str, modality: str = "CT", instances: int = 10) -> dict:
    tags = {"SeriesInstanceUID": uid, "Modality": modality}
    return {"ID": orthanc_id, "MainDicomTags": tags, "Instances": [str(n) for n in range(instances)]}


def test_the_key_series_is_opened_when_the_pacs_holds_it():
    found = [series("a", "1.1", instances=200), series("b", "1.2", instances=30)]
    assert pick_series(found, "1.2") == "b"


def test_without_a_key_series_the_largest_image_series_is_opened_never_the_sr():
    found = [series("sr", "1.9", modality="SR", instances=500), series("a", "1.1", instances=30), series("b", "1.2")]
    assert pick_series(found, "9.9") == "a"


def test_a_study_without_images_opens_nothing():
    assert pick_series([series("sr", "1.9", modality="SR")], None) is None


@pytest.mark.django_db
def test_the_viewer_redirect_needs_a_login(client):
    response = client.get("/viewer/1.2.3/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
