# The interpreter-only modules are collected only where they can run (SLIMRT_BACKEND=triton and
# TRITON_INTERPRET=1, set by test_triton_suite.py's subprocess); elsewhere they are not even listed.
from triton_env import UNDER_INTERPRETER

INTERPRETER_ONLY = ["test_triton_ops.py", "test_triton_kernels.py", "test_triton_attention.py"]
collect_ignore = [] if UNDER_INTERPRETER else INTERPRETER_ONLY
