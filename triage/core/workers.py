"""The identity of a worker process (what its leases and heartbeats carry), and how a worker keeps its memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import uuid
from functools import lru_cache

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_MAX = 2**31 - 1  # mallopt takes a C int


@lru_cache(maxsize=1)
def _process_id() -> str:
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def this_worker_id(role: str = "") -> str:
    """``role:host:pid:random``, unique per process, so a lease or a heartbeat names the process that holds it."""
    return f"{role}:{_process_id()}" if role else _process_id()


def memory_keep_freed() -> bool:
    """Make this process reuse the memory it frees instead of handing it back to the kernel (glibc only).

    An inference worker allocates the same few hundred MB for every study (the WADO-RS parts, the HU volume, the
    network's tensors). By default glibc maps each of those large blocks afresh and unmaps it when freed, so every
    study faults its working set in again; on a virtual machine whose balloon returns freed guest memory to the
    host, that fault costs about 10 µs a page (seconds per study). With large blocks served from the heap and the
    heap never trimmed, the worker keeps the memory of its largest study and reuses it. Returns False where the C
    library is not glibc (nothing changes there).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        return False
    kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_MAX))
    if not kept:
        logger.warning("the C library refused the memory settings; freed memory goes back to the kernel")
    return kept
