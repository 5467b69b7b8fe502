from .function import BACKENDS, MultiFormationFunction, multi_formation, multi_formation_targets, output_count

__all__ = ["BACKENDS", "MultiFormationFunction", "multi_formation", "multi_formation_targets", "output_count"]
