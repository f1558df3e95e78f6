"""Which rank a failed collective waited for. When a collective times out (`launch.timeout_s`) or a peer's
connection drops, every rank still alive signs in to the job's store and waits a moment; the ranks that never
sign in are the ones that stopped answering (hung, or gone). One line names them."""

from __future__ import annotations

import time
from datetime import timedelta

KEY = "disttrain/failed/{rank}"
MARKERS = ("Timed out", "timed out", "Connection closed by peer", "Connection reset", "Broken pipe", "ECONNRESET",
           "DistBackendError", "DistNetworkError")
ROLL_CALL_S = 3.0  # the survivors time out within about this much of each other


def is_collective_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return isinstance(exc, RuntimeError) and any(marker in text for marker in MARKERS)


def describe_failure(exc: BaseException, comm, timeout_s: int) -> str:
    """One line: what failed on this rank, and which ranks did not answer the roll call."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    line = f"a collective failed on rank {comm.rank} (launch.timeout_s={timeout_s}): {first[:160]}"
    store = getattr(comm, "store", None)
    if store is None or comm.world_size == 1:
        return line
    try:
        store.set_timeout(timedelta(seconds=5))
        store.set(KEY.format(rank=comm.rank), "1")
        time.sleep(ROLL_CALL_S)
        silent = [r for r in range(comm.world_size) if not store.check([KEY.format(rank=r)])]
    except Exception:  # noqa: BLE001 - the store lives in rank 0 (or torchrun's agent): it may be gone too
        return line + "; the job's store does not answer either: the rank or agent holding it is gone"
    if not silent:
        return line + "; every rank is alive (a network problem, or launch.timeout_s too short for a step)"
    return line + f"; not answering: rank(s) {', '.join(map(str, silent))} (hung or gone)"
