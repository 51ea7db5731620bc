"""The identity of a worker process: what its leases and heartbeats carry."""

from __future__ import annotations

import os
import socket
import uuid
from functools import lru_cache


@lru_cache(maxsize=1)
def _process_id() -> str:
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def this_worker_id(role: str = "") -> str:
    """``role:host:pid:random``, unique per process, so a lease or a heartbeat names the process that holds it."""
    return f"{role}:{_process_id()}" if role else _process_id()
