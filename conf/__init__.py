"""recexp's Hydra configs, shipped inside the package (one folder per config group)."""
