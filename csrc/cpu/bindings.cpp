// The one place that registers ddkernels' CPU kernels with PyTorch's dispatcher (schemas +
// CPU impls). Fake/meta kernels for torch.compile live in Python, next to each op.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

// `import ddkernels._C` loads this library so the static registrations below run; the module
// itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}

TORCH_LIBRARY(ddkernels, m) {
  m.def(
      "multi_formation_fwd(Tensor x, int factor, Tensor row_idx, Tensor row_w, Tensor col_idx, "
      "Tensor col_w) -> Tensor");
  m.def(
      "multi_formation_bwd(Tensor grad_out, int factor, int in_h, int in_w, Tensor row_idx, "
      "Tensor row_w, Tensor col_idx, Tensor col_w) -> Tensor");
  m.def("affine_crop_fwd(Tensor x, Tensor theta, int out_h, int out_w, float pad) -> Tensor");
  m.def(
      "affine_crop_bwd(Tensor grad_y, Tensor x, Tensor theta, float pad, bool need_x, bool need_theta) "
      "-> (Tensor, Tensor)");
  m.def("grad_distance_fwd(Tensor[] syn, Tensor[] real, str metric) -> (Tensor, Tensor)");
  m.def(
      "grad_distance_fwd_grad(Tensor[] syn, Tensor[] real, str metric, bool need_syn, bool need_real) "
      "-> (Tensor, Tensor, Tensor[], Tensor[])");
  m.def(
      "grad_distance_bwd(Tensor grad, Tensor[] syn, Tensor[] real, Tensor stats, str metric, "
      "bool need_syn, bool need_real) -> (Tensor[], Tensor[])");
  m.def(
      "scale_shift_fwd(Tensor x, Tensor scale, Tensor shift, Tensor index, bool normalize, "
      "float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "scale_shift_bwd(Tensor grad_y, Tensor x, Tensor scale, Tensor order, Tensor offsets, "
      "Tensor mean, Tensor rstd, bool normalize) -> (Tensor, Tensor, Tensor)");
  m.def("small_conv2d_fwd(Tensor x, Tensor weight, Tensor? bias, int padding, int groups) -> Tensor");
  m.def(
      "small_conv2d_bwd(Tensor grad_y, Tensor x, Tensor weight, int padding, int groups, "
      "bool need_x, bool need_w, bool need_b) -> (Tensor, Tensor, Tensor)");
  m.def(
      "norm_relu_pool_fwd(Tensor x, Tensor weight, Tensor bias, float eps, bool pool) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "norm_relu_pool_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, Tensor mean, "
      "Tensor rstd, bool pool, bool need_x, bool need_wb) -> (Tensor, Tensor, Tensor)");
  m.def(
      "norm_relu_pool_bwd2(Tensor grad_out, Tensor x, Tensor weight, Tensor bias, Tensor mean, "
      "Tensor rstd, bool pool, Tensor? ggx, Tensor? ggw, Tensor? ggb, bool need_go, bool need_x, "
      "bool need_w) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ddkernels, CPU, m) {
  m.impl("multi_formation_fwd", &ddkernels::multi_formation_fwd_cpu);
  m.impl("multi_formation_bwd", &ddkernels::multi_formation_bwd_cpu);
  m.impl("affine_crop_fwd", &ddkernels::affine_crop_fwd_cpu);
  m.impl("affine_crop_bwd", &ddkernels::affine_crop_bwd_cpu);
  m.impl("grad_distance_fwd", &ddkernels::grad_distance_fwd_cpu);
  m.impl("grad_distance_fwd_grad", &ddkernels::grad_distance_fwd_grad_cpu);
  m.impl("grad_distance_bwd", &ddkernels::grad_distance_bwd_cpu);
  m.impl("scale_shift_fwd", &ddkernels::scale_shift_fwd_cpu);
  m.impl("scale_shift_bwd", &ddkernels::scale_shift_bwd_cpu);
  m.impl("small_conv2d_fwd", &ddkernels::small_conv2d_fwd_cpu);
  m.impl("small_conv2d_bwd", &ddkernels::small_conv2d_bwd_cpu);
  m.impl("norm_relu_pool_fwd", &ddkernels::norm_relu_pool_fwd_cpu);
  m.impl("norm_relu_pool_bwd", &ddkernels::norm_relu_pool_bwd_cpu);
  m.impl("norm_relu_pool_bwd2", &ddkernels::norm_relu_pool_bwd2_cpu);
}
