// Fast CPU kernels for MLX (personal.kernels): softmax, logsumexp and sigmoid over float32.
//
// Why: the mlx[cpu] wheels evaluate exp element by element at ~22 ns an element (a scalar loop
// calling libm's fma), ~20x numpy and ~15x torch, and a training step of a small language model
// spends about half its time there (the vocabulary softmax, attention softmax, SiLU). These
// kernels compute exp with the same Cephes polynomial MLX uses, written branch-free so that
// g++ -O3 -march=native vectorises it, and split rows across OpenMP threads. Each op is an MLX
// primitive with a vjp built from MLX ops, so it composes with grad, compile and the rest of
// the graph. Built on the user's machine by personal/kernels/build.py; float32 CPU only.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/vector.h>
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/allocator.h"
#include <typeinfo>

namespace nb = nanobind;
namespace mx = mlx::core;

// exp(x) in float32: x·log2(e) = n + f with n an integer and |f| <= 1/2, 2^f by the degree-6
// polynomial of MLX's own simd::exp (Cephes/fastermath constants), 2^n written into the
// exponent bits. Inputs are clamped to [-88, 88] first: a NaN stays NaN (both compares fail),
// exp(-inf) gives ~6e-39 instead of 0 (inside a softmax that never changes a sum >= 1).
static inline float fexp(float x) {
  x = x < -88.0f ? -88.0f : (x > 88.0f ? 88.0f : x);
  float t = x * 1.44269504088896341f;
  float ip = std::floor(t + 0.5f);
  float f = t - ip;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t e = ((int32_t)ip + 127) << 23;
  float s; std::memcpy(&s, &e, 4);
  return p * s;
}

// Threads per kernel (set_threads). One by default: measured on 2 shared cores, OpenMP's
// second thread made whole DP steps slower (it competes with the BLAS's threads and other
// processes, and a parallel region waits for its slowest thread). Parallel only when there
// is enough work to pay for waking a thread.
static int g_threads = 1;
constexpr int64_t PARALLEL_MIN = 1 << 16;

static void softmax_rows(const float* x, float* y, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) num_threads(g_threads) if (g_threads > 1 && rows * n >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = x + r * n; float* b = y + r * n;
    float m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = a[i] > m ? a[i] : m;
    float s = 0.f;
#pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; ++i) { float e = fexp(a[i] - m); b[i] = e; s += e; }
    float inv = 1.0f / s;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) b[i] *= inv;
  }
}

static void lse_rows(const float* x, float* y, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) num_threads(g_threads) if (g_threads > 1 && rows * n >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = x + r * n;
    float m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) m = a[i] > m ? a[i] : m;
    float s = 0.f;
#pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; ++i) s += fexp(a[i] - m);
    y[r] = m + std::log(s);
  }
}

static void sigmoid_flat(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) num_threads(g_threads) if (g_threads > 1 && n >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; ++i) y[i] = 1.0f / (1.0f + fexp(-x[i]));
}

mx::array fast_softmax(const mx::array& x);
mx::array fast_logsumexp(const mx::array& x);
mx::array fast_sigmoid(const mx::array& x);

// Allocate the output and queue the kernel on the primitive's CPU stream, as MLX's own CPU ops
// do (inputs are row-contiguous: the Python-facing functions make them so).
template <typename Kernel>
static void run_cpu(mx::Stream s, const mx::array& in, mx::array& out, Kernel k) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& enc = mx::cpu::get_command_encoder(s);
  enc.set_input_array(in);
  enc.set_output_array(out);
  enc.dispatch([x = in.data<float>(), y = out.data<float>(), k]() { k(x, y); });
}

// vmap (mx.vmap, used by per-example gradients on bases where the adapter can't be expanded):
// the kernels act on the last axis or element-wise, so the mapped axis moves to the front and
// the op applies to the whole stack.
#define FRONT_AXIS_VMAP(OP) \
  std::pair<std::vector<mx::array>, std::vector<int>> vmap( \
      const std::vector<mx::array>& inputs, const std::vector<int>& axes) override { \
    auto x = inputs[0]; \
    int axis = axes[0]; \
    if (axis < 0) return {{OP(x)}, {-1}}; \
    if (axis != 0) x = mx::moveaxis(x, axis, 0, stream()); \
    return {{OP(x)}, {0}}; \
  }

#define SAME_TYPE_EQUIVALENT \
  bool is_equivalent(const mx::Primitive& other) const override { \
    return typeid(other) == typeid(*this); \
  }

class FastSoftmax : public mx::UnaryPrimitive {
 public:
  explicit FastSoftmax(mx::Stream s) : mx::UnaryPrimitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto& x = inputs[0];
    int64_t n = x.shape(-1), rows = x.size() / n;
    run_cpu(stream(), x, out, [rows, n](const float* a, float* b) { softmax_rows(a, b, rows, n); });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override { throw std::runtime_error("cpu only"); }
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>& cot,
                             const std::vector<int>&, const std::vector<mx::array>& outs) override {
    auto& p = outs[0]; auto& g = cot[0];
    auto pg = mx::multiply(p, g, stream());
    return {mx::subtract(pg, mx::multiply(p, mx::sum(pg, -1, true, stream()), stream()), stream())};
  }
  FRONT_AXIS_VMAP(fast_softmax)
  const char* name() const override { return "FastSoftmax"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }
  SAME_TYPE_EQUIVALENT
};

class FastLogSumExp : public mx::UnaryPrimitive {
 public:
  explicit FastLogSumExp(mx::Stream s) : mx::UnaryPrimitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto& x = inputs[0];
    int64_t n = x.shape(-1), rows = x.size() / n;
    run_cpu(stream(), x, out, [rows, n](const float* a, float* b) { lse_rows(a, b, rows, n); });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override { throw std::runtime_error("cpu only"); }
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cot,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    auto p = fast_softmax(primals[0]);
    return {mx::multiply(p, mx::expand_dims(cot[0], -1, stream()), stream())};
  }
  FRONT_AXIS_VMAP(fast_logsumexp)
  const char* name() const override { return "FastLogSumExp"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    auto shape = in[0].shape();
    shape.pop_back();
    return {shape};
  }
  SAME_TYPE_EQUIVALENT
};

class FastSigmoid : public mx::UnaryPrimitive {
 public:
  explicit FastSigmoid(mx::Stream s) : mx::UnaryPrimitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto& x = inputs[0];
    int64_t n = x.size();
    run_cpu(stream(), x, out, [n](const float* a, float* b) { sigmoid_flat(a, b, n); });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override { throw std::runtime_error("cpu only"); }
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>& cot,
                             const std::vector<int>&, const std::vector<mx::array>& outs) override {
    auto& s = outs[0];
    auto ds = mx::multiply(s, mx::subtract(mx::array(1.0f), s, stream()), stream());
    return {mx::multiply(cot[0], ds, stream())};
  }
  FRONT_AXIS_VMAP(fast_sigmoid)
  const char* name() const override { return "FastSigmoid"; }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override { return {in[0].shape()}; }
  SAME_TYPE_EQUIVALENT
};

static mx::array prepare(const mx::array& x) {
  if (x.dtype() != mx::float32) throw std::invalid_argument("personal.kernels: float32 only");
  if (x.ndim() < 1 || x.size() == 0) throw std::invalid_argument("personal.kernels: empty input");
  return mx::contiguous(x, false, mx::Device::cpu);
}

mx::array fast_softmax(const mx::array& x_) {
  auto x = prepare(x_);
  auto s = mx::default_stream(mx::Device::cpu);
  return mx::array(x.shape(), mx::float32, std::make_shared<FastSoftmax>(s), {x});
}
mx::array fast_logsumexp(const mx::array& x_) {
  auto x = prepare(x_);
  auto s = mx::default_stream(mx::Device::cpu);
  auto shape = x.shape(); shape.pop_back();
  return mx::array(shape, mx::float32, std::make_shared<FastLogSumExp>(s), {x});
}
mx::array fast_sigmoid(const mx::array& x_) {
  auto x = prepare(x_);
  auto s = mx::default_stream(mx::Device::cpu);
  return mx::array(x.shape(), mx::float32, std::make_shared<FastSigmoid>(s), {x});
}

// noise_transform.cpp (its own translation unit: see why there).
void personal_box_muller_sums(const uint64_t* words, double* out, int64_t n);

using Words = nb::ndarray<const uint64_t, nb::numpy, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Doubles = nb::ndarray<double, nb::numpy, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

static void box_muller_sums(Words words, Doubles out) {
  if (words.shape(0) != 4 || words.shape(1) != out.shape(0))
    throw std::invalid_argument("box_muller_sums: words must be (4, n) and out (n,)");
  personal_box_muller_sums(words.data(), out.data(), static_cast<int64_t>(out.shape(0)));
}

NB_MODULE(_fastkernels, m) {
  m.def("softmax", &fast_softmax, nb::arg("x"), "Softmax over the last axis (float32, CPU).");
  m.def("logsumexp", &fast_logsumexp, nb::arg("x"), "logsumexp over the last axis, dropped.");
  m.def("sigmoid", &fast_sigmoid, nb::arg("x"), "Element-wise sigmoid (float32, CPU).");
  m.def("box_muller_sums", &box_muller_sums, nb::arg("words"), nb::arg("out"),
        nb::call_guard<nb::gil_scoped_release>(),
        "out[j] = the sum of the four Box-Muller normals of words[:, j] (float64, in place).");
  m.def("set_threads", [](int n) { g_threads = n < 1 ? 1 : n; }, nb::arg("n"), "Threads per kernel.");
  m.def("threads", []() { return g_threads; });
}
