"""Training, export and model code (needs the ``[train]`` extra: torch)."""
