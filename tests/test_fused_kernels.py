"""The fused C++ HyperLSTM kernels against the eager PyTorch path (the reference), in float64.

The eager path is checked against an independent transcription of the paper in
test_hyperlstm.py; here every output and every gradient of the fused path must equal it, and
the custom ops pass gradcheck and torch.library's op checks on their own.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from nmt import kernels
from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer

HYPER_CELLS = ["hyperlstm", "ln_hyperlstm"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def built_kernels():
    """These tests need the kernels; on a machine with a compiler they must build."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the fused kernels cannot build here")
    assert kernels.available(), kernels.unavailable_reason()


def perturb_(module: torch.nn.Module, scale: float = 0.2) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


def layer_pair(cell: str, bidirectional: bool, dropout: float = 0.0):
    """The same weights behind the fused and the eager path (odd sizes everywhere)."""
    torch.manual_seed(0)
    sizes = dict(hidden_size=13, hyper_size=7, n_z=5, recurrent_dropout=dropout)
    fused = RecurrentLayer(11, RecurrentConfig(cell, **sizes), bidirectional).double()
    eager = RecurrentLayer(
        11, RecurrentConfig(cell, **sizes, fused_kernels=False), bidirectional
    ).double()
    perturb_(fused)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def run_with_grads(layer, x, lengths, state, seed):
    """Outputs, final state, and the gradients of a fixed random loss w.r.t. everything."""
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state)
    torch.manual_seed(seed)  # the same recurrent-dropout masks in both runs
    outputs, final = layer(x, lengths, state)
    values = torch.cat([outputs.flatten()] + [s.flatten() for s in final])
    weights = torch.randn(
        values.shape, generator=torch.Generator().manual_seed(1), dtype=values.dtype
    )
    (values * weights).sum().backward()
    grads = [x.grad, *(s.grad for s in state), *(p.grad.clone() for p in layer.parameters())]
    return values.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", HYPER_CELLS)
def test_fused_matches_eager(cell, bidirectional, dropout):
    fused, eager = layer_pair(cell, bidirectional, dropout)
    assert fused.cells[0].uses_fused_kernels(torch.zeros((), dtype=torch.float64))
    assert not eager.cells[0].uses_fused_kernels(torch.zeros((), dtype=torch.float64))
    fused.train(), eager.train()
    x = torch.randn(4, 6, 11, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 1, 5])
    state = tuple(torch.randn_like(s) * 0.5 for s in fused.initial_state(4, dtype=torch.float64))
    values_f, grads_f = run_with_grads(fused, x, lengths, state, seed=3)
    values_e, grads_e = run_with_grads(eager, x, lengths, state, seed=3)
    torch.testing.assert_close(values_f, values_e, rtol=1e-12, atol=1e-13)
    assert len(grads_f) == len(grads_e)
    for a, b in zip(grads_f, grads_e, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if dropout:  # the masks really acted: a different seed changes the outputs
        other, _ = run_with_grads(fused, x, lengths, state, seed=4)
        assert not torch.allclose(other, values_f)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell", HYPER_CELLS)
def test_fused_decoding_step_matches_eager(cell, dtype):
    fused, eager = layer_pair(cell, bidirectional=False)
    fused, eager = fused.to(dtype).eval(), eager.to(dtype).eval()
    x = torch.randn(5, 11, dtype=dtype)
    state_f = state_e = None
    tolerance = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for _ in range(3):
            h_f, state_f = fused.step(x, state_f)
            h_e, state_e = eager.step(x, state_e)
            torch.testing.assert_close(h_f, h_e, **tolerance)
    for a, b in zip(state_f, state_e, strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def gate_major(batch: int, units: int, rows: int = 4) -> torch.Tensor:
    """A (rows, B, N) view of a (B, rows * N) tensor, as the recurrence passes them."""
    flat = torch.randn(batch, rows * units, dtype=torch.float64)
    return flat.view(batch, rows, units).transpose(0, 1).requires_grad_(True)


def norm_parameters(units: int, on: bool = True) -> list[torch.Tensor | None]:
    if not on:
        return [None] * 4
    shapes = [(4, units), (4, units), (units,), (units,)]
    return [(1 + 0.3 * torch.randn(s, dtype=torch.float64)).requires_grad_(True) for s in shapes]


def dropout_mask(batch: int, units: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    keep = torch.rand(batch, units, generator=generator, dtype=torch.float64) > 0.4
    return keep.double() / 0.6


def ln_lstm_arguments(batch: int = 2, units: int = 3):
    cell_prev = torch.randn(batch, units, dtype=torch.float64, requires_grad=True)
    pre = gate_major(batch, units)
    return (pre, cell_prev, *norm_parameters(units), dropout_mask(batch, units))


def main_cell_arguments(layer_norm: bool, batch: int = 2, units: int = 3):
    d = gate_major(batch, units, rows=12)
    bias = torch.randn(4, units, dtype=torch.float64, requires_grad=True)
    cell_prev = torch.randn(batch, units, dtype=torch.float64, requires_grad=True)
    return (
        gate_major(batch, units), gate_major(batch, units), d, bias, cell_prev,
        *norm_parameters(units, layer_norm), dropout_mask(batch, units),
    )  # fmt: skip


def test_gradcheck_ln_lstm_cell():
    torch.manual_seed(0)
    torch.autograd.gradcheck(torch.ops.hypernmt.ln_lstm_cell, ln_lstm_arguments())


@pytest.mark.parametrize("layer_norm", [False, True])
def test_gradcheck_hyper_main_cell(layer_norm):
    torch.manual_seed(0)
    torch.autograd.gradcheck(torch.ops.hypernmt.hyper_main_cell, main_cell_arguments(layer_norm))


def test_ops_pass_torch_library_checks():
    """Schema, fake (shape-only) kernels and autograd registration, as torch.compile needs."""
    torch.manual_seed(0)
    torch.library.opcheck(torch.ops.hypernmt.ln_lstm_cell.default, ln_lstm_arguments())
    for layer_norm in (False, True):
        torch.library.opcheck(
            torch.ops.hypernmt.hyper_main_cell.default, main_cell_arguments(layer_norm)
        )


def test_one_log_line_names_the_path(caplog):
    fused, eager = layer_pair("ln_hyperlstm", bidirectional=True)
    x = torch.randn(2, 3, 11, dtype=torch.float64)
    kernels._logged.clear()
    with caplog.at_level(logging.INFO, logger="nmt.kernels"):
        fused(x), fused(x), eager(x)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "HyperLSTM recurrence: fused C++ CPU kernels (nmt.kernels)",
        "HyperLSTM recurrence: eager PyTorch path (fused_kernels is off)",
    ]


def test_build_failure_falls_back_to_eager(monkeypatch, caplog):
    """A failing build logs why, once, and the layer runs the eager path with equal results."""
    fused, eager = layer_pair("ln_hyperlstm", bidirectional=False)
    x = torch.randn(2, 4, 11, dtype=torch.float64)

    def broken_load(*args, **kwargs):
        raise RuntimeError("Error building extension 'hypernmt_kernels'")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_load)
    kernels._reset_for_tests()
    try:
        with caplog.at_level(logging.INFO, logger="nmt.kernels"):
            assert not fused.cells[0].uses_fused_kernels(x)
            outputs = fused(x)[0]
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            "fused CPU kernels did not build (RuntimeError: Error building" in m for m in messages
        )
        assert any(
            m.startswith("HyperLSTM recurrence: eager PyTorch path (the fused") for m in messages
        )
        torch.testing.assert_close(outputs, eager(x)[0], rtol=0, atol=0)
    finally:
        monkeypatch.undo()
        kernels._reset_for_tests()
    assert kernels.available()


FALLBACK_SCRIPT = """
import logging, torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer
layer = RecurrentLayer(3, RecurrentConfig("ln_hyperlstm", 5, 4, 2))
outputs, _ = layer(torch.randn(2, 3, 3))
outputs.sum().backward()
print("ran", tuple(outputs.shape))
"""


def test_missing_compiler_falls_back_in_a_fresh_process(tmp_path):
    """A real build with a compiler that does not exist: a clear message, then eager runs."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ran (2, 3, 5)" in done.stdout
    assert "HyperLSTM: the fused CPU kernels did not build" in done.stderr
    assert (
        "HyperLSTM recurrence: eager PyTorch path (the fused kernels did not build" in done.stderr
    )


def test_a_lock_left_by_a_killed_build_is_removed_and_the_build_goes_on(tmp_path):
    """torch's build lock of a process killed mid-build would block every later build forever:
    an old one is removed (a fresh one is waited for), and the build runs (here it fails fast
    on a missing compiler and falls back)."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    env["OMP_NUM_THREADS"] = "1"
    script = "from nmt.kernels import build_directory; print(build_directory())"
    directory = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lock = Path(directory) / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    left = time.time() - kernels.STALE_LOCK_SECONDS - 60
    os.utime(lock, (left, left))
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT], env=env, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removing" in done.stderr and "a kernel build that did not finish" in done.stderr
    assert "ran (2, 3, 5)" in done.stdout and not lock.exists()


def test_the_build_folder_is_one_per_cpu(tmp_path, monkeypatch):
    """-march=native builds for one CPU; another CPU sharing the cache folder builds its own."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folders = {}
    for cpu in ("cpu A avx2", "cpu B avx512f", "cpu A avx2"):
        monkeypatch.setattr(kernels, "cpu_identity", lambda cpu=cpu: cpu)
        folders.setdefault(cpu, set()).add(kernels.build_directory())
    assert all(len(found) == 1 for found in folders.values())
    a, b = (found.pop() for found in folders.values())
    assert a != b and a.parent == b.parent == tmp_path


def test_a_fresh_lock_is_waited_for(tmp_path, monkeypatch):
    lock = tmp_path / "lock"
    lock.touch()
    monkeypatch.setattr(kernels, "LOCK_POLL_SECONDS", 0.01)
    released = threading.Timer(0.3, lock.unlink)
    released.start()
    start = time.monotonic()
    kernels.wait_for_build_lock(tmp_path)
    assert time.monotonic() - start >= 0.25 and not lock.exists()
    released.join()


@pytest.mark.parametrize("cell", HYPER_CELLS)
def test_fused_matches_eager_across_parallel_chunks(cell):
    """A batch large enough for several at::parallel_for chunks per kernel, on two threads."""
    fused, eager = layer_pair(cell, bidirectional=False, dropout=0.3)
    fused.train(), eager.train()
    batch = 1400  # the kernels' grain at 13 units is 630 rows: three chunks
    x = torch.randn(batch, 3, 11, dtype=torch.float64)
    lengths = torch.randint(1, 4, (batch,))
    state = tuple(torch.zeros_like(s) for s in fused.initial_state(batch, dtype=torch.float64))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values_f, grads_f = run_with_grads(fused, x, lengths, state, seed=3)
    finally:
        torch.set_num_threads(threads)
    values_e, grads_e = run_with_grads(eager, x, lengths, state, seed=3)
    torch.testing.assert_close(values_f, values_e, rtol=1e-12, atol=1e-13)
    for a, b in zip(grads_f, grads_e, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
