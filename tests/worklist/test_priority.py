"""The reading-order rule, without a database."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from worklist import priority as p

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CAP = timedelta(minutes=60)
POS = p.FindingScore(score=0.93, positive=True)
NEG = p.FindingScore(score=0.20, positive=False)


def item(item_id: int, *, minutes_ago: float = 5, urgency: int = 0, findings=(), pinned=None, waiting=True):
    return p.PriorityInput(
        item_id=item_id,
        received_at=NOW - timedelta(minutes=minutes_ago),
        urgency=urgency,
        findings=tuple(findings),
        pinned_level=pinned,
        waiting=waiting,
    )


def order(*items):
    return [i.item_id for i in p.reading_order(items, now=NOW, max_wait=CAP)]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("STAT", 3),
        ("stat", 3),
        (" S ", 3),
        ("ASAP", 2),
        ("A", 2),
        ("HIGH", 1),
        ("urgent", 1),
        ("ROUTINE", 0),
        ("MEDIUM", 0),
        ("LOW", 0),
        ("", 0),
        (None, 0),
        ("whatever", 0),
    ],
)
def test_urgency_from_order_and_dicom_codes(code, expected):
    assert p.urgency_from_code(code) == expected


def test_positive_finding_is_read_before_negative_one():
    assert order(item(1, minutes_ago=30, findings=[NEG]), item(2, minutes_ago=1, findings=[POS])) == [2, 1]


def test_positive_finding_is_read_before_stat_order():
    assert order(item(1, minutes_ago=30, urgency=3), item(2, minutes_ago=1, findings=[POS])) == [2, 1]


def test_stat_then_asap_then_high_then_routine():
    items = [item(i, minutes_ago=10 + i, urgency=u) for i, u in enumerate([0, 1, 2, 3])]
    assert order(*items) == [3, 2, 1, 0]


def test_higher_positive_score_is_read_first():
    low = item(1, minutes_ago=30, findings=[p.FindingScore(0.6, True)])
    high = item(2, minutes_ago=1, findings=[p.FindingScore(0.95, True)])
    assert order(low, high) == [2, 1]


def test_urgency_breaks_ties_between_positive_findings_before_score():
    stat = item(1, urgency=3, findings=[p.FindingScore(0.6, True)])
    routine = item(2, urgency=0, findings=[p.FindingScore(0.99, True)])
    assert order(routine, stat) == [1, 2]


def test_subthreshold_score_does_not_reorder_unflagged_studies():
    older = item(1, minutes_ago=20, findings=[p.FindingScore(0.05, False)])
    newer = item(2, minutes_ago=10, findings=[p.FindingScore(0.45, False)])
    assert order(newer, older) == [1, 2]


def test_oldest_first_among_equals():
    assert order(item(1, minutes_ago=5), item(2, minutes_ago=25), item(3, minutes_ago=15)) == [2, 3, 1]


def test_ties_on_time_break_by_id():
    assert order(item(9, minutes_ago=5), item(4, minutes_ago=5), item(7, minutes_ago=5)) == [4, 7, 9]


def test_waiting_past_cap_rises_above_flagged_studies():
    starving = item(1, minutes_ago=61)
    flagged = item(2, minutes_ago=1, findings=[POS])
    assert order(flagged, starving) == [1, 2]


def test_waiting_exactly_the_cap_is_not_starving():
    assert order(item(1, minutes_ago=60), item(2, minutes_ago=1, findings=[POS])) == [2, 1]


def test_claimed_item_does_not_starve():
    claimed = item(1, minutes_ago=120, waiting=False)
    assert order(claimed, item(2, minutes_ago=1, findings=[POS])) == [2, 1]


def test_starving_items_keep_priority_order_among_themselves():
    assert order(item(1, minutes_ago=300), item(2, minutes_ago=70, findings=[POS])) == [2, 1]


def test_pinned_level_is_not_changed_by_positive_ai_finding():
    pinned_routine = item(1, minutes_ago=30, findings=[POS], pinned=p.LEVEL_ROUTINE)
    high = item(2, minutes_ago=1, urgency=1)
    assert order(pinned_routine, high) == [2, 1]


def test_pinned_level_raises_an_unflagged_study_above_flagged_ones():
    pinned = item(1, minutes_ago=1, pinned=p.LEVEL_CRITICAL)
    flagged = item(2, minutes_ago=30, findings=[p.FindingScore(0.99, True)])
    assert order(flagged, pinned) == [1, 2]


def test_pinned_key_ignores_ai_scores():
    with_ai = p.sort_key(urgency=0, findings=[POS], pinned_level=2)
    without_ai = p.sort_key(urgency=0, findings=[NEG], pinned_level=2)
    assert with_ai == without_ai


def test_pinned_item_is_read_before_unpinned_item_of_same_level():
    pinned = item(1, minutes_ago=1, urgency=0, pinned=p.LEVEL_STAT)
    stat = item(2, minutes_ago=30, urgency=3)
    assert order(stat, pinned) == [1, 2]


def test_scores_outside_0_1_are_clamped():
    assert p.sort_key(urgency=0, findings=[p.FindingScore(1.7, True)]) == p.sort_key(
        urgency=0, findings=[p.FindingScore(1.0, True)]
    )


@pytest.mark.parametrize("bad", [-1, 5])
def test_pinned_level_outside_range_is_refused(bad):
    with pytest.raises(ValueError, match="pinned level"):
        p.sort_key(urgency=0, findings=(), pinned_level=bad)


def test_urgency_outside_range_is_refused():
    with pytest.raises(ValueError, match="urgency"):
        p.sort_key(urgency=4, findings=())


def test_level_labels_cover_every_level():
    assert [p.LEVEL_LABELS[level] for level in p.LEVELS] == ["routine", "high", "asap", "stat", "critical"]


def test_order_is_a_total_stable_order_over_every_combination():
    """Every combination of inputs: the order is deterministic, complete and respects each rule pairwise."""
    scores = [(), (NEG,), (POS,), (p.FindingScore(0.55, True), NEG)]
    combos = itertools.product([0, 1, 2, 3], scores, [None, 0, 4], [1, 59, 61, 200], [True, False])
    items = [
        item(i, urgency=u, findings=f, pinned=pin, minutes_ago=m, waiting=w)
        for i, (u, f, pin, m, w) in enumerate(combos)
    ]
    first = order(*items)
    assert first == order(*reversed(items))
    assert sorted(first) == sorted(i.item_id for i in items)
    position = {item_id: n for n, item_id in enumerate(first)}
    for a, b in itertools.combinations(items, 2):
        a_starving = a.waiting and NOW - a.received_at > CAP
        b_starving = b.waiting and NOW - b.received_at > CAP
        if a_starving != b_starving:
            assert (position[a.item_id] < position[b.item_id]) == a_starving
            continue
        a_level = p.level_for(urgency=a.urgency, findings=a.findings, pinned_level=a.pinned_level)
        b_level = p.level_for(urgency=b.urgency, findings=b.findings, pinned_level=b.pinned_level)
        if a_level != b_level:
            assert (position[a.item_id] < position[b.item_id]) == (a_level > b_level)
