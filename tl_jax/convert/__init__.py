"""Importers of checkpoints trained elsewhere (`tl-jax import-hf`)."""
