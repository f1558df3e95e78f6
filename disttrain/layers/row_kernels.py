"""Compiled row updates for fp32 embedding tables (`train.sparse_kernel`): SGD and Adagrad (AdagradDecay too)
applied from the row gradients in one pass that prefetches the rows ahead. The same library carries DLRM's fp32
dot interaction (`interaction_kernels.c`, used by `disttrain.layers.interaction` once the library is loaded).

SGD is bitwise the torch path's result (same operations, same order), so `auto` uses it. Adagrad differs from
torch's in one place: the accumulator's square root is correctly rounded here, while torch's vectorized `sqrt` on
these CPUs is off by one unit in the last place for ~0.7% of inputs; an update then differs by at most 2 units in
the last place (tests/test_row_kernels.py states it). Adagrad's kernel therefore runs only with
`train.sparse_kernel=compiled`; `auto` keeps torch's ops for it.

The C sources beside this file are built at the first training step with the machine's C compiler (`cc`, `-O3
-march=native -ffp-contract=off`) into `~/.cache/disttrain/kernels/<hash of source, flags and compiler>/`, once
per machine (later processes only load it; serving never builds it):
ranks that build at the same moment each write their own file and rename it into place. It is loaded with
ctypes (no torch headers to compile: the build takes well under a second). Where there is no compiler, or the
build fails, `train.sparse_kernel=auto` keeps torch's ops (said once on stderr); `compiled` is an error then.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from disttrain.errors import ConfigError

SOURCES = (Path(__file__).with_name("row_kernels.c"), Path(__file__).with_name("interaction_kernels.c"))
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared")
CACHE = Path.home() / ".cache" / "disttrain" / "kernels"
MODES = ("auto", "compiled", "torch")

# "lib": the library, or "error": why there is none; "use": the library while this process trains with it (the
# last `library(mode)` call: a run with train.sparse_kernel=torch turns the compiled interaction off again)
_loaded: dict[str, ctypes.CDLL | str | None] = {}


def _compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu() -> str:
    """The CPU's model and instruction sets (a home directory shared between machines keeps one build per CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    wanted = ("model name", "flags")
    return " ".join(line for line in text.splitlines()[:40] if line.split(":")[0].strip() in wanted)


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler (cc, gcc or clang) on the PATH")
    found = Path(compiler).resolve()  # the compiler's file (its path, size and time stand for its version)
    stat = found.stat()
    identity = f"{found} {stat.st_size} {stat.st_mtime_ns} {_cpu()}".encode()  # -march=native: per CPU
    sources = b"".join(source.read_bytes() for source in SOURCES)
    key = hashlib.sha256(sources + " ".join(FLAGS).encode() + identity).hexdigest()[:16]
    target = CACHE / key / "row_kernels.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"row_kernels.{os.getpid()}.so")
        done = subprocess.run([compiler, *FLAGS, "-o", str(partial), *map(str, SOURCES), "-lm"], capture_output=True,
                              text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise OSError(f"{compiler} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        os.replace(partial, target)
    lib = ctypes.CDLL(str(target))
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    lib.disttrain_sgd_rows.argtypes = [ptr, i64, ptr, i64, ptr, f32]
    lib.disttrain_adagrad_rows.argtypes = [ptr, ptr, i64, ptr, i64, ptr, f32, f32]
    for suffix in ("f32", "bf16"):
        forward, backward = getattr(lib, f"disttrain_dot_forward_{suffix}"), getattr(lib, f"disttrain_dot_backward_{suffix}")
        forward.restype = backward.restype = ctypes.c_int
        forward.argtypes = [ptr, ptr, i64, i64, i64, ptr]
        backward.argtypes = [ptr, ptr, i64, i64, i64, ptr, i64, ptr]
    return lib


def loaded() -> ctypes.CDLL | None:
    """The library while this process trains with it (see `library`); never builds it."""
    found = _loaded.get("use")
    return found if isinstance(found, ctypes.CDLL) else None


def library_mode_checked(mode: str) -> None:
    """No library (torch's ops), after checking that `mode` is one of MODES."""
    if mode not in MODES:
        raise ConfigError(f"train.sparse_kernel: got {mode!r}, expected one of {', '.join(MODES)}")


def library(mode: str) -> ctypes.CDLL | None:
    """The compiled kernels for `train.sparse_kernel=mode` (None: use torch's ops)."""
    library_mode_checked(mode)
    _loaded["use"] = None
    if mode == "torch":
        return None
    if "lib" not in _loaded and "error" not in _loaded:
        try:
            _loaded["lib"] = _build()
        except OSError as exc:
            _loaded["error"] = str(exc)
            if mode == "auto":
                print(f"disttrain: compiled row updates unavailable ({exc}); using torch's ops", file=sys.stderr)
    if "lib" in _loaded:
        _loaded["use"] = _loaded["lib"]
        return _loaded["lib"]
    if mode == "compiled":
        raise ConfigError(f"train.sparse_kernel: compiled, but the row kernels could not be built "
                          f"({_loaded['error']}); expected a C compiler, or train.sparse_kernel=auto")
    return None


def _fits(weight: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, *state: torch.Tensor) -> bool:
    """Plain CPU fp32 memory the kernel can walk: contiguous rows of the weight's width, int64 row ids."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.is_contiguous()
            and grads.dtype == torch.float32 and grads.is_contiguous() and rows.dtype == torch.int64
            and rows.is_contiguous() and grads.dim() == 2 and grads.shape == (rows.numel(), weight.shape[1])
            and all(s.shape == weight.shape and s.dtype == torch.float32 and s.is_contiguous() for s in state))


def sgd(lib: ctypes.CDLL, weight: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, lr: float) -> bool:
    """weight[rows] += grads * -lr (rows may repeat); False when the tensors do not fit the kernel."""
    if not _fits(weight, rows, grads):
        return False
    lib.disttrain_sgd_rows(weight.data_ptr(), weight.shape[1], rows.data_ptr(), rows.numel(), grads.data_ptr(),
                           -lr)
    return True


def adagrad(lib: ctypes.CDLL, weight: torch.Tensor, total: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor,
            lr: float, eps: float) -> bool:
    """Adagrad on distinct `rows` with the element-wise accumulator `total`; False when the tensors do not fit."""
    if not _fits(weight, rows, grads, total):
        return False
    lib.disttrain_adagrad_rows(weight.data_ptr(), total.data_ptr(), weight.shape[1], rows.data_ptr(), rows.numel(),
                               grads.data_ptr(), -lr, eps)
    return True
