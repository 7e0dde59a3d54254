"""Training and evaluation (JAX only: this package never imports TensorFlow)."""
