// Boundary checks shared by the CPU kernels: every message names the argument, what was expected
// and what arrived, so a caller bypassing the Python wrapper still gets a readable error.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define DDK_CHECK_CPU(t) \
  TORCH_CHECK((t).device().is_cpu(), #t " must be a CPU tensor, got device ", (t).device())
#define DDK_CHECK_CONTIG(t) \
  TORCH_CHECK((t).is_contiguous(), #t " must be contiguous (got strides ", (t).strides(), ")")
#define DDK_CHECK_DIM(t, n, layout)                                                     \
  TORCH_CHECK((t).dim() == (n), #t " must be " #n "-D " layout ", got shape ", (t).sizes())
#define DDK_CHECK_DTYPE(t, dt) \
  TORCH_CHECK((t).scalar_type() == (dt), #t " must have dtype ", (dt), ", got ", (t).scalar_type())
#define DDK_CHECK_FLOAT(t)                                                                  \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble,        \
              #t " must be float32 or float64 for the cpu backend, got ", (t).scalar_type())
#define DDK_CHECK_FLOATING(t)                                                                \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble ||         \
                  (t).scalar_type() == at::kBFloat16 || (t).scalar_type() == at::kHalf,      \
              #t " must be float32, float64, bfloat16 or float16 for the cpu backend, got ", \
              (t).scalar_type())
