from .function import (BACKENDS, MAX_FACTOR, MultiFormationBackward, MultiFormationFunction, multi_formation,
                       multi_formation_targets, output_count)

__all__ = ["BACKENDS", "MAX_FACTOR", "MultiFormationBackward", "MultiFormationFunction", "multi_formation",
           "multi_formation_targets", "output_count"]
