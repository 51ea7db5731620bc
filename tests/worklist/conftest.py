from __future__ import annotations

import pytest

from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory


@pytest.fixture
def rad2(db):
    return UserFactory(username="rad2", role="radiologist")


@pytest.fixture
def make_study(db):
    """A study with current results and its synced worklist item: ``make_study(ich=0.93, lvo=None, **study)``."""
    from worklist.services import worklist_item_sync

    def make(*, ich: float | None = None, lvo: float | None = None, threshold: float = 0.5, png=None, **study_kw):
        study = StudyFactory(**study_kw)
        for finding, score in (("ich", ich), ("lvo", lvo)):
            if score is None:
                continue
            series = SeriesFactory(study=study, series_instance_uid=f"{study.study_instance_uid}.{finding}")
            ResultFactory(
                series=series, finding=finding, score=score, threshold=threshold, key_image_png=png, model_name=finding
            )
        return worklist_item_sync(study=study)

    return make
