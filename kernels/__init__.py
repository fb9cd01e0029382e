"""Triton GPU kernels, shipped in the wheel as ``slimrt.kernels``.

Each module holds one op family: ``_x_kernel`` (``@triton.jit``) and its launcher ``x(...)``, named
after the ``torch.ops.slimrt.x`` op it implements (ops/cuda.py registers the launchers). This file
imports nothing: the submodules import triton, and only ops/cuda.py imports them, on first use.

On a machine without a GPU the kernels run on CPU tensors through the Triton interpreter when
``TRITON_INTERPRET=1`` is set before these modules are imported (how the test suite checks them).
"""
