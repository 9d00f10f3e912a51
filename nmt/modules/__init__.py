"""Pure-PyTorch building blocks (no Lightning): recurrent cells and layers, hypernetworks."""
