"""Memory allocator for workers: jemalloc or tcmalloc preloaded by the launchers.

glibc's malloc returns large blocks to the OS, so every step page-faults its activations afresh; a
caching allocator keeps them (+11% samples/s on the kaggle benchmark here). `launch.allocator`:
`auto` (jemalloc, else tcmalloc, else the system's), `off`, `jemalloc`, `tcmalloc`, or a library path.
Variables the user set (LD_PRELOAD, MALLOC_CONF) are never overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from disttrain.errors import ConfigError

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
CANDIDATES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc.so.4", "libtcmalloc.so", "libtcmalloc_minimal.so.4"),
}
# Keep freed memory for reuse (never purge), no background thread competing for a pinned core.
JEMALLOC_CONF = "oversize_threshold:1,background_thread:false,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"


def find_library(name: str, dirs: Sequence[str] = LIBRARY_DIRS) -> str | None:
    for directory in dirs:
        for filename in CANDIDATES[name]:
            path = Path(directory) / filename
            if path.exists():
                return str(path)
    return None


def allocator_env(
    choice: str, *, user_env: Mapping[str, str], dirs: Sequence[str] = LIBRARY_DIRS
) -> tuple[str, dict[str, str]]:
    """(allocator name, variables to add to a worker's environment)."""
    if choice == "off" or "LD_PRELOAD" in user_env:
        return ("user LD_PRELOAD" if "LD_PRELOAD" in user_env else "system"), {}
    if choice == "auto":
        for name in ("jemalloc", "tcmalloc"):
            path = find_library(name, dirs)
            if path:
                return _env_for(name, path, user_env)
        return "system", {}
    if choice in CANDIDATES:
        path = find_library(choice, dirs)
        if path is None:
            raise ConfigError(
                f"launch.allocator: {choice} is not installed (looked for {', '.join(CANDIDATES[choice])} in "
                f"{', '.join(dirs)}); install it (Debian: libjemalloc2 / google-perftools) or use auto or off"
            )
        return _env_for(choice, path, user_env)
    if not Path(choice).is_file():
        raise ConfigError(f"launch.allocator: got {choice!r}, expected auto, off, jemalloc, tcmalloc or a library path")
    return _env_for("jemalloc" if "jemalloc" in choice else "custom", choice, user_env)


def _env_for(name: str, path: str, user_env: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    env = {"LD_PRELOAD": path}
    if name == "jemalloc" and "MALLOC_CONF" not in user_env:
        env["MALLOC_CONF"] = JEMALLOC_CONF
    return name, env


def loaded_allocator() -> str:
    """What this process actually runs with, read from its memory map."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in maps:
            return name
    return "system"

