"""Drop-in replacements for the original dataset-distillation codebases, on ddkernels' fused ops.

Same names, signatures, argument conventions and results as the originals (docs/spec.md §1a, §2a, §4a):

* VICO-UoE/DatasetCondensation ``utils.py``: :func:`distance_wb`, :func:`match_loss`
  (``args.dis_metric`` ∈ {ours, mse, cos}, ``args.device``) → :func:`ddkernels.grad_distance`;
  ``networks.py`` (imported by ``utils.py``; the same class in mtt-distillation, with ``only_feat``
  in DatasetFactorization, and with IDC's own convention in Efficient-Dataset-Condensation
  ``models/convnet.py``): :class:`ConvNet` (same ``state_dict``) → :func:`ddkernels.norm_relu_pool`.
* The DSA of ``utils.py`` (DatasetCondensation, and the copies in mtt-distillation and
  DatasetFactorization): :func:`DiffAugment`, :class:`ParamDiffAug`, :func:`set_seed_DiffAug` and
  ``rand_*`` (:mod:`ddkernels.compat.dsa`) → :mod:`ddkernels.augment`, same draws, same Siamese seeds.
* snu-mllab/Efficient-Dataset-Condensation ``condense.py``: :func:`dist` (mse, l1, l1_mean, cos) →
  ``grad_distance``; ``Synthesizer.decode_zoom`` / ``decode_zoom_multi`` / ``decode_zoom_bound`` as
  functions returning ``(data, targets)`` → :func:`ddkernels.multi_formation`.
* Huage001/DatasetFactorization ``utils.py``: :class:`StyleTranslator` (same ``state_dict``) →
  :func:`ddkernels.scale_shift`; :func:`bank_from_translators`, :func:`translators_from_bank`,
  :func:`bank_from_state_dict` convert to and from one :class:`ddkernels.nn.HallucinatorBank`.

The one-line change for an existing training script::

    import utils, ddkernels.compat
    ddkernels.compat.patch(utils)      # replaces the names above inside `utils`
    print(ddkernels.compat.patch(utils, dry_run=True))   # or first: what it would replace, and why not

Every function takes a keyword-only ``backend=``; :func:`set_backend` / :func:`use_backend` set it
module-wide (default ``"auto"``: the fused kernels where they run, else the reference).
"""
from ._backend import get_backend, set_backend, use_backend
from . import dsa
from ._patch import PatchError, PatchReport, patch, patched, unpatch
from .convnet import ConvNet, IDCConvNet
from .dsa import DiffAugment, MTTParamDiffAug, ParamDiffAug, set_seed_DiffAug
from .dc import distance_wb, match_loss
from .haba import StyleTranslator, bank_from_state_dict, bank_from_translators, translators_from_bank
from .idc import decode_zoom, decode_zoom_bound, decode_zoom_multi, dist

__all__ = ["ConvNet", "DiffAugment", "IDCConvNet", "MTTParamDiffAug", "ParamDiffAug", "PatchError", "PatchReport",
           "StyleTranslator", "bank_from_state_dict", "bank_from_translators", "decode_zoom", "decode_zoom_bound",
           "decode_zoom_multi", "dist", "distance_wb", "dsa", "get_backend", "match_loss", "patch", "patched",
           "set_backend", "set_seed_DiffAug", "translators_from_bank", "unpatch", "use_backend"]
