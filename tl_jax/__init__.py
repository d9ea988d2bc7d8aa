"""tl_jax: Train Large, Then Compress, in JAX/Flax."""

__version__ = "0.1.0"
