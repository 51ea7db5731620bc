"""A short chaos run (tools/chaos.py) under ``make test``: studies flow PACS → worklist → EMR under ``make run``
while workers, loops and the web server are SIGKILLed, PostgreSQL restarts and the EMR is down for a while."""

from __future__ import annotations

import pytest

from tools.chaos import ChaosConfig, print_table, run_chaos

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(1200)
def test_studies_and_reports_survive_kills_a_database_restart_and_an_emr_outage(tmp_path):
    config = ChaosConfig(
        studies=20,
        kills=5,
        seed=7,
        duration_s=75,
        outages=("postgres", "emr_down"),
        settle_timeout_s=300,
        json_path=tmp_path / "chaos.json",
    )
    # Its own directory under /tmp (pytest's is private to root; the cluster runs as postgres), removed on a pass.
    summary = run_chaos(config)
    print_table(summary)
    assert summary["violations"] == []
