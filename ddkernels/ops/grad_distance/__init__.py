from .function import BACKENDS, METRICS, GradDistanceFunction, grad_distance, stack_classes

__all__ = ["BACKENDS", "METRICS", "GradDistanceFunction", "grad_distance", "stack_classes"]
