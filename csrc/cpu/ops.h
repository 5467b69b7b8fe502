// Declarations of the CPU kernels; registered with the dispatcher in bindings.cpp only, so the
// kernel files stay on the light <ATen/core/Tensor.h> include (bindings pulls in torch/library.h).
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ddkernels {

// multi_formation.cpp
at::Tensor multi_formation_fwd_cpu(const at::Tensor& x, int64_t factor, const at::Tensor& row_idx,
                                   const at::Tensor& row_w, const at::Tensor& col_idx,
                                   const at::Tensor& col_w);
at::Tensor multi_formation_bwd_cpu(const at::Tensor& grad_out, int64_t factor, int64_t in_h,
                                   int64_t in_w, const at::Tensor& row_idx, const at::Tensor& row_w,
                                   const at::Tensor& col_idx, const at::Tensor& col_w);

// affine_crop.cpp: windows theta (N, T, 4) = (top, left, height, width), output (T*N, C, H, W).
at::Tensor affine_crop_fwd_cpu(const at::Tensor& x, const at::Tensor& theta, int64_t out_h, int64_t out_w,
                               double pad);
std::tuple<at::Tensor, at::Tensor> affine_crop_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                       const at::Tensor& theta, double pad, bool need_x,
                                                       bool need_theta);

// grad_distance.cpp: tensors in the batched layout (K, *param_shape); see the file's header.
std::tuple<at::Tensor, at::Tensor> grad_distance_fwd_cpu(at::TensorList syn, at::TensorList real,
                                                         c10::string_view metric);
// The forward plus the gradients at upstream gradient 1 (not for "global_cos").
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
grad_distance_fwd_grad_cpu(at::TensorList syn, at::TensorList real, c10::string_view metric,
                           bool need_syn, bool need_real);
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> grad_distance_bwd_cpu(
    const at::Tensor& grad, at::TensorList syn, at::TensorList real, const at::Tensor& stats,
    c10::string_view metric, bool need_syn, bool need_real);

// scale_shift.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> scale_shift_fwd_cpu(const at::Tensor& x,
                                                                   const at::Tensor& scale,
                                                                   const at::Tensor& shift,
                                                                   const at::Tensor& index,
                                                                   bool normalize, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> scale_shift_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& order,
    const at::Tensor& offsets, const at::Tensor& mean, const at::Tensor& rstd, bool normalize);

// small_conv.cpp: stride-1 grouped conv for tiny channel counts; padding in [0, K-1].
at::Tensor small_conv2d_fwd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t padding,
                                int64_t groups);
std::tuple<at::Tensor, at::Tensor, at::Tensor> small_conv2d_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, int64_t padding,
    int64_t groups, bool need_x, bool need_w, bool need_b);

// norm_relu_pool.cpp: ConvNet-3's GroupNorm(C, C) + ReLU + AvgPool2d(2) on (N, C, H, W).
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_relu_pool_fwd_cpu(const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      const at::Tensor& bias,
                                                                      double eps, bool pool);
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_relu_pool_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, bool pool, bool need_x,
    bool need_wb);
// The double backward: gradients of <ggx, dx> + <ggw, dweight> + <ggb, dbias> w.r.t. grad_out, x, weight.
std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_relu_pool_bwd2_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, bool pool,
    const std::optional<at::Tensor>& ggx, const std::optional<at::Tensor>& ggw,
    const std::optional<at::Tensor>& ggb, bool need_go, bool need_x, bool need_w);

}  // namespace ddkernels
