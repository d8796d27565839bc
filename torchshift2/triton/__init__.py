"""Triton backend (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``)."""
