from .function import BACKENDS, AffineCropFunction, affine_crop, crop_grid

__all__ = ["BACKENDS", "AffineCropFunction", "affine_crop", "crop_grid"]
