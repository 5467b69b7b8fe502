// Declarations of the CPU kernels; registered with the dispatcher in bindings.cpp only, so the
// kernel files stay on the light <ATen/core/Tensor.h> include (bindings pulls in torch/library.h).
#pragma once
#include <ATen/core/Tensor.h>

namespace ddkernels {

// multi_formation.cpp
at::Tensor multi_formation_fwd_cpu(const at::Tensor& x, int64_t factor, const at::Tensor& row_idx,
                                   const at::Tensor& row_w, const at::Tensor& col_idx,
                                   const at::Tensor& col_w);
at::Tensor multi_formation_bwd_cpu(const at::Tensor& grad_out, int64_t factor, int64_t in_h,
                                   int64_t in_w, const at::Tensor& row_idx, const at::Tensor& row_w,
                                   const at::Tensor& col_idx, const at::Tensor& col_w);

}  // namespace ddkernels
