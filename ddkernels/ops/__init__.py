"""One sub-package per fused op: reference.py, triton.py, function.py (dispatch + autograd)."""
