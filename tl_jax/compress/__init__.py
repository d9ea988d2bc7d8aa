"""Compression of trained models: quantization, pruning, memory accounting and export."""
