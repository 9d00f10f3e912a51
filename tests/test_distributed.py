"""Distributed training on CPU, and checkpoints that survive a kill.

A tiny translation model trains a few steps on a slice of the real Multi30k data through
``nmt fit`` and a YAML config, in real processes that talk over 127.0.0.1: DDP (gloo) with two
processes, DeepSpeed ZeRO-2 with two processes, and two "nodes" started by
``configs/launch_multinode.sh``. Each rank saves what it started and ended with. The checks:
- every rank ran in a world of 2 and trained on batches no other rank saw;
- all ranks end with identical parameters, which differ from the initial ones;
- DDP, DeepSpeed ZeRO-2 and the 2-node job reach the same parameters from the same data (three
  routes to data-parallel Adam that share no code between DDP and DeepSpeed);
- a DeepSpeed checkpoint directory converts to a checkpoint plain PyTorch loads.
Then: a process killed while writing a checkpoint leaves the previous one loadable.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from nmt.io import RETIRED_SUFFIX, replace_directory
from nmt.training.strategies import STAGING_SUFFIX

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
LAUNCHER = CONFIGS / "launch_multinode.sh"
NMT = [sys.executable, "-m", "nmt.cli"]
DEEPSPEED_ZERO2 = {
    "class_path": "nmt.training.strategies.DeepSpeedAnyDeviceStrategy",
    "init_args": {"config": str(CONFIGS / "deepspeed_zero2.json")},
}
TIMEOUT_S = 240  # the machine may be shared; a healthy run takes a fraction of this
STEPS = 3
TRAIN_PAIRS, VAL_PAIRS = 256, 16
VOCAB_SIZE = 500


# ------------------------------------------------------------ callbacks run inside the workers
class SaveRankResult(pl.Callback):
    """Saves, per rank, the world it ran in, fingerprints of its batches and its weights."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.batches: list[str] = []
        self.initial: dict[str, torch.Tensor] = {}

    @staticmethod
    def _weights(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = self._weights(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        digest = hashlib.sha1()
        for leaf in torch.utils._pytree.tree_leaves(batch):
            if isinstance(leaf, torch.Tensor):
                digest.update(leaf.detach().cpu().contiguous().numpy().tobytes())
        self.batches.append(digest.hexdigest())

    def on_train_end(self, trainer, pl_module) -> None:
        result = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node_rank": trainer.node_rank,
            "batches": self.batches,
            "initial": self.initial,
            "final": self._weights(pl_module),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(result, self.directory / f"rank{trainer.global_rank}.pt")


class _BlockWhenPickled:
    """Pickling this touches a marker file, then hangs: a save caught in the middle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        Path(self.marker).touch()
        time.sleep(3600)
        raise AssertionError("the test should have killed this process")


class HangInSecondStepSave(pl.Callback):
    """Hangs in the middle of the first checkpoint written after step 2."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.global_step == 2:
            checkpoint["hang"] = _BlockWhenPickled(self.marker)


# ------------------------------------------------------------ running processes
@dataclass
class RankResult:
    global_rank: int
    world_size: int
    node_rank: int
    batches: list[str]
    initial: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(**extra: str) -> dict[str, str]:
    """This environment, minus any rank variables, with the callbacks above importable."""
    dropped = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as file:
        # Its own session, so that it and every process it starts end together by its PID.
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _run_all(commands: list[tuple[list[str], dict[str, str]]], directory: Path) -> None:
    """Run the commands side by side; fail with their logs if any fails or hangs."""
    logs = [directory / f"process{i}.log" for i in range(len(commands))]
    processes = []
    try:
        for (command, env), log in zip(commands, logs, strict=True):
            processes.append(_start(command, env, log))
        deadline = time.monotonic() + TIMEOUT_S
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes:
            _end(process)
    failed = [i for i, p in enumerate(processes) if p.returncode != 0]
    if failed:
        text = "\n".join(f"--- {logs[i].name}\n{logs[i].read_text()[-4000:]}" for i in failed)
        pytest.fail(f"processes {failed} failed or timed out:\n{text}")


# ------------------------------------------------------------ data and configs
@pytest.fixture(scope="session")
def tiny_corpus(corpora: Path, tmp_path_factory) -> Path:
    """The first real Multi30k en-de pairs, prepared by ``nmt prep translation``."""
    from data_prep import parallel_corpus

    raw = tmp_path_factory.mktemp("multi30k_raw")
    splits = []
    for split, count in (("train", TRAIN_PAIRS), ("val", VAL_PAIRS)):
        files = []
        for lang in ("en", "de"):
            with gzip.open(corpora / "multi30k" / f"{split}.{lang}.gz", "rt") as source:
                lines = [next(source) for _ in range(count)]
            path = raw / f"{split}.{lang}"
            path.write_text("".join(lines), encoding="utf-8")
            files.append(str(path))
        splits += ["--split", f"{split}={','.join(files)}"]
    out = tmp_path_factory.mktemp("prepared") / "multi30k.en-de"
    argv = ["--corpus", "files", "--src", "en", "--tgt", "de", *splits, "--out", str(out)]
    assert parallel_corpus.main([*argv, "--vocab-size", str(VOCAB_SIZE), "--num-proc", "1"]) == 0
    return out


def _write_config(
    directory: Path, corpus: Path, strategy: object, callbacks: list[dict], **trainer: object
) -> Path:
    """A complete ``nmt fit`` config: a tiny layer-norm HyperLSTM model, a few steps."""
    config = {
        "seed_everything": 0,
        "model": {
            "class_path": "nmt.training.translation.TranslationTask",
            "init_args": {
                "architecture": {
                    "vocab_size": VOCAB_SIZE,
                    "embedding_size": 16,
                    "encoder_layers": 2,
                    "decoder_layers": 2,
                    "dropout": 0.1,
                    "recurrent": {
                        "cell": "ln_hyperlstm",
                        "hidden_size": 16,
                        "hyper_size": 8,
                        "n_z": 4,
                    },
                },
            },
        },
        "data": {
            "class_path": "nmt.training.translation.TranslationDataModule",
            "init_args": {"corpus": str(corpus), "batch_tokens": 200},
        },
        "trainer": {
            "default_root_dir": str(directory / "root"),  # LightningCLI saves its config here
            "accelerator": "cpu",
            "devices": 2,
            "num_nodes": 1,
            "strategy": strategy,
            "max_steps": STEPS,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
            **trainer,
        },
        "checkpoint": {"dirpath": str(directory / "checkpoints"), "monitor": "train/loss"},
    }
    path = directory / "fit.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def _save_ranks(directory: Path) -> list[dict]:
    init_args = {"directory": str(directory / "ranks")}
    return [{"class_path": "test_distributed.SaveRankResult", "init_args": init_args}]


def _results(directory: Path) -> list[RankResult]:
    files = sorted((directory / "ranks").glob("rank*.pt"))
    return [RankResult(**torch.load(f, weights_only=False)) for f in files]


def _train_one_node(directory: Path, corpus: Path, strategy: object) -> list[RankResult]:
    """``nmt fit`` with devices 2: Lightning starts the second process itself."""
    config = _write_config(directory, corpus, strategy, _save_ranks(directory))
    _run_all([([*NMT, "fit", "--config", str(config)], _environment())], directory)
    return _results(directory)


def _train_two_nodes(directory: Path, corpus: Path, launcher: str) -> list[RankResult]:
    """``configs/launch_multinode.sh`` once per "node", both on 127.0.0.1."""
    config = _write_config(directory, corpus, "ddp", _save_ranks(directory))
    shape = {"NNODES": "2", "NPROC_PER_NODE": "1", "LAUNCHER": launcher}
    address = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    command = ["bash", str(LAUNCHER), "fit", "--config", str(config)]
    nodes = [(command, _environment(**shape, **address, NODE_RANK=str(n))) for n in (0, 1)]
    _run_all(nodes, directory)
    return _results(directory)


# ------------------------------------------------------------ the runs (once per session)
@pytest.fixture(scope="session")
def deepspeed_ops_built() -> None:
    """Build DeepSpeed's CPU communication op once. The first build on a machine takes about
    40 s; it is cached in TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions)."""
    code = "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
    done = subprocess.run([sys.executable, "-c", code], timeout=900, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"DeepSpeed could not build its CPU op (needs a C++ compiler):\n{done.stderr}")


@pytest.fixture(scope="session")
def ddp_ranks(tiny_corpus, tmp_path_factory) -> list[RankResult]:
    return _train_one_node(tmp_path_factory.mktemp("ddp"), tiny_corpus, "ddp")


@pytest.fixture(scope="session")
def deepspeed_run(tiny_corpus, tmp_path_factory, deepspeed_ops_built) -> Path:
    directory = tmp_path_factory.mktemp("deepspeed")
    _train_one_node(directory, tiny_corpus, DEEPSPEED_ZERO2)
    return directory


# ------------------------------------------------------------ checks
def _assert_data_parallel(ranks: list[RankResult]) -> None:
    assert [r.global_rank for r in ranks] == [0, 1]
    assert [r.world_size for r in ranks] == [2, 2]
    assert [len(r.batches) for r in ranks] == [STEPS, STEPS]
    assert not set(ranks[0].batches) & set(ranks[1].batches), "ranks trained on the same batches"
    first, second = ranks[0], ranks[1]
    for name, value in first.final.items():
        assert torch.equal(first.initial[name], second.initial[name]), f"{name} started apart"
        assert torch.equal(value, second.final[name]), f"ranks disagree on {name}"
    assert any(not torch.equal(first.final[n], first.initial[n]) for n in first.final)


def _assert_same_training(a: RankResult, b: RankResult) -> None:
    assert a.batches == b.batches
    assert a.final.keys() == b.final.keys()
    for name in a.final:
        torch.testing.assert_close(a.final[name], b.final[name], rtol=1e-5, atol=1e-5)


def test_ddp_two_processes_agree(ddp_ranks):
    _assert_data_parallel(ddp_ranks)


def test_deepspeed_zero2_two_processes_agree_with_ddp(deepspeed_run, ddp_ranks):
    ranks = _results(deepspeed_run)
    _assert_data_parallel(ranks)
    _assert_same_training(ranks[0], ddp_ranks[0])


def test_deepspeed_checkpoint_is_complete_and_converts(deepspeed_run, ddp_ranks):
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    from nmt.checkpoints import load_translation

    checkpoints = deepspeed_run / "checkpoints"
    last = checkpoints / "last.ckpt"
    assert (last / "latest").is_file() and (last / "checkpoint").is_dir()
    leftovers = [p.name for p in checkpoints.iterdir() if p.suffix != ".ckpt"]
    assert not leftovers, f"staging directories left behind: {leftovers}"
    single_file = deepspeed_run / "last-fp32.ckpt"
    convert_zero_checkpoint_to_fp32_state_dict(last, single_file)
    model, _ = load_translation(single_file)
    final = ddp_ranks[0].final
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, final[f"model.{name}"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_deepspeed_resume_from_last_continues_exactly(tiny_corpus, ddp_ranks, tmp_path):
    """DeepSpeed ZeRO-2: 2 steps, then ``--ckpt_path last`` to step 3, reaches the parameters of
    3 uninterrupted steps (optimizer shards, schedule and data order all restored)."""
    config = _write_config(tmp_path, tiny_corpus, DEEPSPEED_ZERO2, _save_ranks(tmp_path))
    fit = [*NMT, "fit", "--config", str(config)]
    stop_early = [
        "--trainer.max_steps",
        str(STEPS - 1),
        "--last_checkpoint.every_n_train_steps",
        "1",
    ]
    _run_all([([*fit, *stop_early], _environment())], tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt" / "latest").is_file()
    _run_all([([*fit, "--ckpt_path", "last"], _environment())], tmp_path)
    resumed = _results(tmp_path)
    assert [len(r.batches) for r in resumed] == [1, 1]
    assert resumed[0].batches[0] == ddp_ranks[0].batches[-1]
    for name, value in resumed[0].final.items():
        torch.testing.assert_close(value, ddp_ranks[0].final[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "launcher",
    # "env" (Lightning starts the processes) repeats the DDP test's launch path; slow only.
    ["torchrun", pytest.param("env", marks=pytest.mark.slow)],
)
def test_two_nodes_on_localhost_agree_with_one_node(launcher, tiny_corpus, ddp_ranks, tmp_path):
    ranks = _train_two_nodes(tmp_path, tiny_corpus, launcher)
    _assert_data_parallel(ranks)
    assert [r.node_rank for r in ranks] == [0, 1]
    _assert_same_training(ranks[0], ddp_ranks[0])


# ------------------------------------------------------------ checkpoints and kills
def _kill_while_saving(tmp_path: Path, imports: str, save: str) -> Path:
    """A process saves a good checkpoint, then is killed in the middle of saving a second."""
    target, marker = tmp_path / "model.ckpt", tmp_path / "saving"
    code = (
        "import pathlib, sys, time, torch\n"
        f"{imports}\n"
        "target, marker = sys.argv[1], sys.argv[2]\n"
        "class Hang:\n"
        "    def __reduce__(self):  # a save caught in the middle\n"
        "        pathlib.Path(marker).touch()\n"
        "        time.sleep(3600)\n"
        f"save = {save}\n"
        "save({'step': 1, 'weight': torch.arange(1000.0)}, target)\n"
        "save({'step': 2, 'weight': torch.zeros(1000), 'hang': Hang()}, target)\n"
    )
    command = [sys.executable, "-c", code, str(target), str(marker)]
    process = _start(command, _environment(), tmp_path / "saver.log")
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), (tmp_path / "saver.log").read_text()
    finally:
        _end(process)
    return target


def test_atomic_save_killed_midway_keeps_the_previous_checkpoint(tmp_path):
    target = _kill_while_saving(
        tmp_path,
        "from nmt.io import atomic_file\n"
        "def atomic_save(obj, path):\n"
        "    with atomic_file(path) as file:\n"
        "        torch.save(obj, file)",
        "atomic_save",
    )
    checkpoint = torch.load(target, weights_only=True)
    assert checkpoint["step"] == 1
    assert torch.equal(checkpoint["weight"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["model.ckpt"]


def test_plain_save_killed_midway_leaves_a_broken_file(tmp_path):
    """The failure the atomic save prevents, so the test above can tell the two apart."""
    target = _kill_while_saving(tmp_path, "", "torch.save")
    with pytest.raises(Exception):  # noqa: B017 - any load failure is the point
        torch.load(target, weights_only=True)


def test_nmt_fit_killed_while_checkpointing_keeps_last_loadable(tiny_corpus, tmp_path):
    """``nmt fit`` is killed in the middle of writing a checkpoint after step 2: every
    checkpoint file left is complete, and last.ckpt (step 1) loads with plain PyTorch."""
    from nmt.checkpoints import load_translation

    marker = tmp_path / "saving"
    callbacks = [
        {
            "class_path": "test_distributed.HangInSecondStepSave",
            "init_args": {"marker": str(marker)},
        }
    ]
    config = _write_config(tmp_path, tiny_corpus, "auto", callbacks, devices=1, max_steps=STEPS)
    steps = ["--checkpoint.every_n_train_steps", "1", "--last_checkpoint.every_n_train_steps", "1"]
    process = _start(
        [*NMT, "fit", "--config", str(config), *steps], _environment(), tmp_path / "fit.log"
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), (tmp_path / "fit.log").read_text()[-4000:]
    finally:
        _end(process)
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert tmp_path / "checkpoints" / "last.ckpt" in checkpoints
    for path in checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        assert checkpoint["global_step"] in (1, 2)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 1
    load_translation(tmp_path / "checkpoints" / "last.ckpt")


def test_deepspeed_strategy_binds_gpus_by_index_and_cpus_by_local_rank(monkeypatch):
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import StrategyRegistry

    from nmt.training.strategies import DeepSpeedAnyDeviceStrategy

    monkeypatch.setenv("LOCAL_RANK", "1")
    devices = {
        "cuda": [torch.device("cuda", 0), torch.device("cuda", 1)],
        "cpu": [torch.device("cpu"), torch.device("cpu")],
    }
    strategies = {
        kind: DeepSpeedAnyDeviceStrategy(
            config={}, parallel_devices=found, cluster_environment=LightningEnvironment()
        )
        for kind, found in devices.items()
    }
    assert strategies["cuda"].root_device == torch.device("cuda", 1)
    assert strategies["cuda"]._device_rank == 1  # as Lightning's own strategy on CUDA
    assert strategies["cpu"].root_device.index is None
    assert strategies["cpu"]._device_rank == 1
    stage_1 = StrategyRegistry.get("deepspeed_any_device_stage_1")
    assert isinstance(stage_1, DeepSpeedAnyDeviceStrategy)
    assert stage_1.config["zero_optimization"]["stage"] == 1


def test_replace_directory_swaps_a_checkpoint_directory(tmp_path):
    final, new = tmp_path / "last.ckpt", tmp_path / f"last.ckpt{STAGING_SUFFIX}"
    (final / "checkpoint").mkdir(parents=True)
    (final / "latest").write_text("old")
    (new / "checkpoint").mkdir(parents=True)
    (new / "latest").write_text("new")
    # a previous swap interrupted between its two renames
    (tmp_path / f"last.ckpt{RETIRED_SUFFIX}").mkdir()
    replace_directory(new, final)
    assert (final / "latest").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ------------------------------------------------------------ the shipped configs and launcher
def test_paper_scale_config_matches_the_training_classes(monkeypatch, capsys):
    """The WMT'14 config parses against the real task, data module, strategy and CLI."""
    from nmt.training import cli

    monkeypatch.chdir(REPO)  # the config names its DeepSpeed JSON relative to the repository
    config = CONFIGS / "wmt14_en_fr_gnmt.yaml"
    with pytest.raises(SystemExit) as done:
        cli.main(["fit", "--config", str(config), "--print_config"])
    printed = capsys.readouterr()
    assert done.value.code in (0, None), printed.err[-4000:]
    assert "DeepSpeedAnyDeviceStrategy" in printed.out and "ln_hyperlstm" in printed.out
    for name in ("deepspeed_zero1.json", "deepspeed_zero2.json"):
        deepspeed_config = json.loads((CONFIGS / name).read_text())
        assert "gradient_accumulation_steps" not in deepspeed_config  # Lightning sets it
        assert deepspeed_config["train_micro_batch_size_per_gpu"] == 1  # token batches


def test_launcher_rejects_an_unknown_launcher():
    env = _environment(LAUNCHER="mpirun", NPROC_PER_NODE="1")
    done = subprocess.run(
        ["bash", str(LAUNCHER), "fit"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2 and "LAUNCHER must be torchrun, srun or env" in done.stderr
