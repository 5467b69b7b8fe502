from .function import BACKENDS, ScaleShiftFunction, scale_shift, segment_table

__all__ = ["BACKENDS", "ScaleShiftFunction", "scale_shift", "segment_table"]
