"""Tensor parallelism on CPU: MPI rank discovery, gloo collectives, and TP wiring of the reference models."""
