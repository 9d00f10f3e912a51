"""Fused CPU kernels of the HyperLSTM step, built on first use and registered as custom ops.

``hyperlstm_cpu.cpp`` holds one forward and one backward kernel per cell (the hyper cell's
layer-norm LSTM update; the main cell's d-row scalings, dynamic bias and LSTM update), defined
as ``torch.ops.hypernmt.*``. This module compiles it with the system C++ compiler through
``torch.utils.cpp_extension.load`` the first time a process needs it (cached in
``TORCH_EXTENSIONS_DIR``; later processes only load the library, the way DeepSpeed builds its
CPU ops). A build at first use rather than at install time keeps the package a pure-Python
install (no compiler needed to install or to serve on a machine without one) and lets the
compiler target the machine that runs the kernels (``-march=native``). A build killed before it
finished leaves torch's lock file behind, which would make every later process wait for it
forever; a lock older than any build is removed first.

It also registers the forward ops' autograd formulas and fake (shape-only) implementations,
so autograd and torch.compile see one op per cell per step. If the build fails, ``available()``
is False and the callers run the eager PyTorch path; the reason is logged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

EXTENSION_NAME = "hypernmt_kernels"
SOURCES = (Path(__file__).with_name("hyperlstm_cpu.cpp"),)
# -ffast-math at compile time only (never at link time, which would switch the whole process
# to flush-to-zero) lets the compiler vectorise exp and tanh through glibc's libmvec.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp")
LINK_FLAGS = ("-fopenmp",)
NUM_GATES = 4
NORM_ROWS = 10  # norm gradients: gate gains 4, gate biases 4, cell gain, cell bias
# a build takes about a minute; a lock this old was left by a process killed while building
STALE_LOCK_SECONDS = 600.0
LOCK_POLL_SECONDS = 0.5
CPU_HASH_CHARS = 12  # of the CPU identity's sha256 in the build folder's name

_state: dict[str, object] = {}  # "ok": bool, "reason": str once a build was tried
_logged: set[str] = set()
_registered: list[bool] = []  # the Python parts are registered once per process


def available() -> bool:
    """Whether the fused kernels are loaded (building them on the first call)."""
    if "ok" not in _state:
        _state["ok"], _state["reason"] = _build()
        if not _state["ok"]:
            logger.warning(
                "HyperLSTM: the fused CPU kernels did not build (%s); the eager PyTorch path "
                "runs instead",
                _state["reason"],
            )
    return bool(_state["ok"])


def unavailable_reason() -> str:
    return str(_state.get("reason", ""))


def cpu_identity() -> str:
    """What ``-march=native`` compiles for: the CPU's model and instruction-set flags (Linux),
    or the platform's processor string elsewhere."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {}
    for line in info.split("\n\n", 1)[0].splitlines():  # the first CPU's block
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    keys = ("model name", "flags", "Features", "CPU part")  # x86 names; ARM's last two
    return " ".join(fields.get(key, "") for key in keys)


def build_directory() -> Path:
    """Where the build is cached: ``TORCH_EXTENSIONS_DIR`` (torch's default root otherwise),
    one folder per Python and torch version and per CPU: a build for one CPU's instruction
    set could crash on another (a home directory shared by the nodes of a cluster)."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    cpu = hashlib.sha256(cpu_identity().encode()).hexdigest()[:CPU_HASH_CHARS]
    return Path(root) / f"{EXTENSION_NAME}-{python}-torch{torch.__version__}-cpu{cpu}"


def wait_for_build_lock(directory: Path, stale_after: float = STALE_LOCK_SECONDS) -> None:
    """Wait while another process builds; remove a lock left by one that was killed."""
    lock = directory / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > stale_after:
            logger.warning(
                "HyperLSTM: removing %s, left %.0f s ago by a kernel build that did not finish",
                lock,
                age,
            )
            lock.unlink(missing_ok=True)
            return
        time.sleep(LOCK_POLL_SECONDS)


def _build() -> tuple[bool, str]:
    try:
        from torch.utils import cpp_extension

        directory = build_directory()
        directory.mkdir(parents=True, exist_ok=True)
        wait_for_build_lock(directory)
        cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(s) for s in SOURCES],
            build_directory=str(directory),
            extra_cflags=list(COMPILE_FLAGS),
            extra_ldflags=list(LINK_FLAGS),
            is_python_module=False,
            verbose=os.environ.get("HYPERNMT_KERNELS_VERBOSE") == "1",
        )
        _register_python_parts()
    except Exception as error:  # any build or load failure means: fall back to eager
        lines = str(error).strip().splitlines() or [type(error).__name__]
        return False, f"{type(error).__name__}: {lines[-1][:300]}"
    return True, ""


def log_path_once(message: str) -> None:
    """One log line per process and distinct message saying which path a layer runs."""
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


def _reset_for_tests() -> None:
    """Forget the build outcome (the ops stay registered once loaded)."""
    _state.clear()
    _logged.clear()


# ------------------------------------------------------------------- autograd and fake kernels


def thread_sums(rows: int, like: Tensor) -> Tensor:
    """Zeros for parameter gradients the backward kernels sum per thread: (rows, threads, N)."""
    return like.new_zeros(rows, torch.get_num_threads(), like.shape[-1])


def norm_accumulator(like: Tensor) -> Tensor:
    """The norm gradients' sums: gate gains 4, gate biases 4, cell gain and bias (10 rows)."""
    return thread_sums(NORM_ROWS, like)


def bias_accumulator(like: Tensor) -> Tensor:
    """The main cell's bias gradient's sums, (4, threads, N)."""
    return thread_sums(NUM_GATES, like)


def norm_totals(acc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(10, threads, N) norm gradients -> gate gain (4, N), gate bias (4, N), cell (N,) x2."""
    return (
        acc[:NUM_GATES].sum(1),
        acc[NUM_GATES : 2 * NUM_GATES].sum(1),
        acc[8].sum(0),
        acc[9].sum(0),
    )


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def _ln_lstm_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _ln_lstm_backward(ctx, grad_h, grad_c):
    pre, cell_prev, gate_w, gate_b, cell_w, cell_b, g_mask = ctx.saved_tensors
    grad_pre = torch.empty(pre.shape, dtype=pre.dtype, device=pre.device)
    grad_cell_prev = torch.empty_like(cell_prev)
    acc = norm_accumulator(cell_prev)
    torch.ops.hypernmt.ln_lstm_cell_backward(
        _zeros_if_none(grad_h, cell_prev), _zeros_if_none(grad_c, cell_prev), pre, cell_prev,
        gate_w, gate_b, cell_w, cell_b, g_mask, grad_pre, grad_cell_prev, acc,
    )  # fmt: skip
    gw, gb, cw, cb = norm_totals(acc)
    return grad_pre, grad_cell_prev, gw.view_as(gate_w), gb.view_as(gate_b), cw, cb, None


def _main_setup(ctx, inputs, output) -> None:
    ctx.layer_norm = inputs[5] is not None
    ctx.save_for_backward(*inputs)


def _main_backward(ctx, grad_h, grad_c):
    h_part, x_main, d, bias, cell_prev, gate_w, gate_b, cell_w, cell_b, g_mask = ctx.saved_tensors
    shape = (NUM_GATES, *cell_prev.shape)
    grad_h_part, grad_x_main = cell_prev.new_empty(shape), cell_prev.new_empty(shape)
    grad_d = torch.empty(d.shape, dtype=d.dtype, device=d.device)
    grad_cell_prev = torch.empty_like(cell_prev)
    acc = norm_accumulator(cell_prev) if ctx.layer_norm else cell_prev.new_empty(0)
    bias_sums = bias_accumulator(cell_prev)
    torch.ops.hypernmt.hyper_main_cell_backward(
        _zeros_if_none(grad_h, cell_prev), _zeros_if_none(grad_c, cell_prev), h_part, x_main,
        d, bias, cell_prev, gate_w, gate_b, cell_w, cell_b, g_mask, grad_h_part, grad_x_main,
        grad_d, grad_cell_prev, acc, bias_sums,
    )  # fmt: skip
    norms = [None] * 4
    if ctx.layer_norm:
        gw, gb, cw, cb = norm_totals(acc)
        norms = [gw.view_as(gate_w), gb.view_as(gate_b), cw, cb]
    grad_bias = bias_sums.sum(1).view_as(bias)
    return grad_h_part, grad_x_main, grad_d, grad_bias, grad_cell_prev, *norms, None


def _state_like(cell_prev: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(cell_prev), torch.empty_like(cell_prev)


def _register_python_parts() -> None:
    if _registered:
        return
    torch.library.register_autograd(
        "hypernmt::ln_lstm_cell", _ln_lstm_backward, setup_context=_ln_lstm_setup
    )
    torch.library.register_autograd(
        "hypernmt::hyper_main_cell", _main_backward, setup_context=_main_setup
    )
    torch.library.register_fake("hypernmt::ln_lstm_cell")(
        lambda pre, cell_prev, *rest: _state_like(cell_prev)
    )
    torch.library.register_fake("hypernmt::hyper_main_cell")(
        lambda h_part, x_main, d, bias, cell_prev, *rest: _state_like(cell_prev)
    )
    _registered.append(True)
