"""Schemathesis over the OpenAPI schema, against the app on a live server (daphne on PostgreSQL) with a token: no
answer is a 5xx, and every status an operation answers is documented for it.

Each operation gets positive and negative cases (``EXAMPLES`` of each), half of them on a study and a result that
exist, so the success and conflict paths are reached too, not only 404s, and a few cases without the token. Every
failure is collected before the assertions, so one run names them all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.factories import ResultFactory, SeriesFactory, StudyFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLES = 20  # per operation and generation mode: with the anonymous ones about 500 cases, a minute or so
ANONYMOUS_EXAMPLES = 4
CHECKS = [not_a_server_error, status_code_conformance]


@dataclass
class Tally:
    cases: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[tuple[str, int], str] = field(default_factory=dict)

    def record(self, label: str, status: int, failure: str | None) -> None:
        self.cases += 1
        self.statuses[(label, status)] += 1
        if failure is not None:
            self.failures.setdefault((label, status), failure[:300])


def _known_ids() -> dict[str, object]:
    """A study on the worklist with a current result and a key image, for the path parameters half the time."""
    from worklist.services import worklist_item_sync

    study = StudyFactory(study_description="CT HEAD WO CONTRAST")
    result = ResultFactory(series=SeriesFactory(study=study), score=0.93, key_image_png=b"\x89PNG\r\n\x1a\n")
    worklist_item_sync(study=study)
    return {"study_instance_uid": study.study_instance_uid, "result_id": result.pk}


def _strategy(operation, mode: GenerationMode, known: dict[str, object]) -> st.SearchStrategy:
    names = {p.name for p in operation.path_parameters}
    generated = operation.as_strategy(generation_mode=mode)
    fixed = {name: value for name, value in known.items() if name in names}
    if not fixed:
        return generated
    return st.one_of(generated, operation.as_strategy(generation_mode=mode, path_parameters=fixed))


def _exercise(
    operation, mode: GenerationMode, base_url: str, headers: dict, known: dict, tally: Tally, examples: int = EXAMPLES
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategy(operation, mode, known))
    def run(case) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as err:
            failures = err.exceptions if isinstance(err, FailureGroup) else [err]
            tally.record(label, response.status_code, "; ".join(f"{f.code} {f.title}" for f in failures))
        else:
            tally.record(label, response.status_code, None)

    run()


def test_every_operation_answers_without_5xx_and_only_documented_statuses(live_server_url):
    from triage.core.services import token_create

    headers = {"Authorization": f"Token {token_create(user=UserFactory(username='schemathesis'))}"}
    known = _known_ids()
    schema = schemathesis.openapi.from_url(f"{live_server_url}/api/v1/schema/", headers=headers, timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally()

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _exercise(operation, mode, live_server_url, headers, known, tally)
        _exercise(operation, GenerationMode.POSITIVE, live_server_url, {}, known, tally, examples=ANONYMOUS_EXAMPLES)

    print(f"schemathesis: {len(operations)} operations, {tally.cases} cases; statuses {sorted(tally.statuses.items())}")
    print(f"schemathesis: {len(tally.failures)} failing (operation, status) pairs: {sorted(tally.failures)}")
    server_errors = {key: text for key, text in tally.failures.items() if key[1] >= 500}
    assert len(operations) >= 10
    assert not server_errors, server_errors
    assert not tally.failures, tally.failures
