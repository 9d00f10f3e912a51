"""The Lightning layer: tasks (LightningModules), data modules, strategies and the training CLI."""
