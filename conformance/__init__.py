"""Conformance suite for dilated (atrous) 2-D convolution across PyTorch, TensorFlow, JAX and NumPy."""

__version__ = "0.1.0"
