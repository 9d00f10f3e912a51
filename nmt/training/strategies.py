"""DeepSpeed ZeRO training that also runs on CPU, and swaps its checkpoint directories atomically.

Lightning's ``DeepSpeedStrategy`` refuses any accelerator but CUDA, although DeepSpeed itself
trains ZeRO stage 1 and 2 on CPU over gloo. ``DeepSpeedAnyDeviceStrategy`` lifts that refusal:
on CUDA it behaves exactly like Lightning's strategy (NCCL, one GPU per process); on CPU it skips
the GPU-only checks, lets Lightning pick gloo, and tells DeepSpeed which process it is by local
rank (CPU devices carry no index). Name it in a YAML config::

    trainer:
      strategy:
        class_path: nmt.training.strategies.DeepSpeedAnyDeviceStrategy
        init_args:
          config: configs/deepspeed_zero2.json

or, once this module is imported, by the registered names ``deepspeed_any_device``,
``deepspeed_any_device_stage_1`` and ``deepspeed_any_device_stage_2``.

A DeepSpeed checkpoint is a directory written by every rank (DeepSpeed bypasses Lightning's
CheckpointIO). This strategy writes it beside its destination and puts it in place only when
every rank has finished, so a run killed while saving leaves the previous checkpoint loadable.
Multi-node DeepSpeed checkpoints need a filesystem shared by the nodes, as DeepSpeed assumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry
from lightning.pytorch.strategies.deepspeed import _validate_device_index_selection
from torch.nn import Module
from torch.optim import Optimizer

from nmt.io import replace_directory

# The sibling directory DeepSpeed writes a checkpoint into before it replaces the previous one;
# not ".ckpt", so Lightning's search for the last checkpoint never picks it up.
STAGING_SUFFIX = ".partial"


class DeepSpeedAnyDeviceStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy, unchanged on CUDA, also usable on CPU (gloo)."""

    strategy_name = "deepspeed_any_device"

    @property
    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    @property
    def _device_rank(self) -> int:
        """The device DeepSpeed should bind: the GPU index on CUDA, the local rank on CPU."""
        return self.local_rank if self._on_cpu else self.root_device.index

    def setup_environment(self) -> None:
        if not self._on_cpu:
            super().setup_environment()
            return
        # Skip DeepSpeedStrategy's CUDA-only check; DDPStrategy sets up the device and calls
        # setup_distributed below.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        assert self.parallel_devices is not None
        if not self._on_cpu:
            # GPU indices must match local ranks; CPU devices have no index to check.
            _validate_device_index_selection(self.parallel_devices)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()  # gloo on CPU, NCCL on CUDA (Lightning's default)

    def _setup_model_and_optimizer(
        self, model: Module, optimizer: Optimizer | None, lr_scheduler: Any = None
    ) -> tuple[Any, Optimizer]:
        """``deepspeed.initialize`` for training, bound to ``_device_rank``."""
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer

    def _initialize_deepspeed_inference(self, model: Module) -> None:
        """Validation/test outside fit: Lightning's inference set-up, bound to ``_device_rank``."""
        import deepspeed
        from lightning.pytorch.strategies.deepspeed import remove_module_hooks

        assert isinstance(self.config, dict)
        inference_config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
        for key in ("fp16", "bf16"):
            if key in self.config:
                inference_config[key] = self.config[key]
        if self.zero_stage_3:
            inference_config["zero_allow_untested_optimizer"] = self.config[
                "zero_allow_untested_optimizer"
            ]
            inference_config["zero_optimization"] = self.config["zero_optimization"]
        remove_module_hooks(model)
        self.model, _, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank),
            config=inference_config,
            model=model,
            optimizer=None,
            lr_scheduler=None,
            model_parameters=[],
            dist_init_required=False,
        )

    def save_checkpoint(
        self, checkpoint: dict, filepath: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        """Write the checkpoint directory beside ``filepath``, then swap it in on global rank 0."""
        final = Path(self.broadcast(str(filepath)))
        staging = final.with_name(final.name + STAGING_SUFFIX)
        if self.is_global_zero and staging.exists():
            shutil.rmtree(staging)  # left over from a run killed while saving
        self.barrier("deepspeed_checkpoint_staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("deepspeed_checkpoint_written")
        if self.is_global_zero:
            replace_directory(staging, final)
        self.barrier("deepspeed_checkpoint_in_place")

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(
            cls.strategy_name, cls, description="DeepSpeed on CUDA or CPU", override=True
        )
        for stage in (1, 2):
            strategy_registry.register(
                f"{cls.strategy_name}_stage_{stage}",
                cls,
                description=f"DeepSpeed ZeRO stage {stage} on CUDA or CPU",
                override=True,
                stage=stage,
            )


DeepSpeedAnyDeviceStrategy.register_strategies(StrategyRegistry)
