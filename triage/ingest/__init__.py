"""Ingest: finding new CT studies on the PACS, and taking each one through fetch, inference and results.

- ``poll``: incremental QIDO-RS search of every enabled source, with a cursor that survives restarts.
- ``jobs``: the job row as the source of truth: claim with a conditional update, lease, retry, sweep.
- ``pipeline``: the stages of one job: series discovery and routing, retrieval, volume, inference, results.
"""
