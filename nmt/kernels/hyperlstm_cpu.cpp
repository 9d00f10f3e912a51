// Fused per-step element-wise kernels of the HyperLSTM (CPU), registered as custom operators.
//
// One call does a whole step's element-wise work for one cell, batch row by batch row
// (at::parallel_for over rows), so each row's 4N gate values stay in the cache:
//
//   hypernmt::ln_lstm_cell        layer-norm LSTM after its matrix products (the hyper cell):
//                                 gate layer norms, sigmoids and tanh, recurrent dropout on g,
//                                 cell update, cell layer norm, h = sigmoid(o) tanh(LN(c)).
//   hypernmt::hyper_main_cell     the HyperLSTM's main cell: first the pre-activation
//                                 d_h * (W_h h) + d_x * (W_x x) + W_bz z_b + b_0 (the d-row
//                                 scalings and the dynamic bias), then the same LSTM update,
//                                 with or without layer norms.
//
// The backward kernels recompute the gates from the pre-activation inputs instead of storing
// them (about 15 (B, N) tensors a step that the eager path keeps), write the input gradients
// into caller-provided buffers (views into the sequence's gradient buffers), and add the
// layer-norm gain/bias gradients and the main cell's bias gradient into one slot per thread
// (the caller sums the slots once per sequence). The matrix products stay in BLAS, outside
// these kernels.
//
// Tensor layout: gate-major (4, B, N) or (12, B, N) with any strides in the first two
// dimensions and unit stride in the last; (B, N) tensors with unit stride in the last.
// Vectorisation is the compiler's (-O3 -march=native, libmvec for exp/tanh; see loader).
// Each op's body is a generic lambda outside AT_DISPATCH_FLOATING_TYPES, because the
// `#pragma omp simd` lines cannot sit inside a macro argument.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kGates = 4;        // (i, f, o, g)
constexpr int64_t kScales = 12;      // d_h, d_x and W_bz z_b, four gates each
constexpr double kLayerNormEps = 1e-5;
constexpr int64_t kNormRows = 10;    // norm gradients: gate gain 4, gate bias 4, cell 2

template <typename T>
struct Rows3 {  // (K, B, N) with unit stride in N
  T* data;
  int64_t s0, s1;
  T* at(int64_t k, int64_t b) const { return data + k * s0 + b * s1; }
};

template <typename T>
struct Rows2 {  // (B, N) with unit stride in N
  T* data;
  int64_t s0;
  T* at(int64_t b) const { return data + b * s0; }
};

void check_rows(const at::Tensor& t, int64_t dims, int64_t units, const char* name) {
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions, got ", t.dim());
  TORCH_CHECK(t.size(-1) == units, name, " must have ", units, " units, got ", t.size(-1));
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, name, " needs unit stride in its last dim");
}

template <typename T>
Rows3<T> rows3(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1)};
}

template <typename T>
Rows2<T> rows2(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0)};
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// mean and 1/sqrt(var + eps) of v[0..n)
template <typename T>
inline void moments(const T* v, int64_t n, T& mean, T& rstd) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += v[j];
  mean = sum / T(n);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < n; ++j) {
    const T d = v[j] - mean;
    sq += d * d;
  }
  rstd = T(1) / std::sqrt(sq / T(n) + T(kLayerNormEps));
}

// Layer-norm input gradient from g = dL/dy * gain and xhat: rstd * (g - mean(g) - xhat mean(g xhat)).
template <typename T>
inline void layer_norm_backward(const T* g, const T* xhat, T rstd, int64_t n, T* out) {
  T sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
  for (int64_t j = 0; j < n; ++j) {
    sum_g += g[j];
    sum_gx += g[j] * xhat[j];
  }
  const T mean_g = sum_g / T(n), mean_gx = sum_gx / T(n);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = rstd * (g[j] - mean_g - xhat[j] * mean_gx);
}

template <typename T>
struct Norms {  // optional layer-norm parameters: gate gain/bias (4, N), cell gain/bias (N,)
  const T* gate_w = nullptr;
  const T* gate_b = nullptr;
  const T* cell_w = nullptr;
  const T* cell_b = nullptr;
  bool on() const { return gate_w != nullptr; }
};

template <typename T>
Norms<T> norms(const std::optional<at::Tensor>& gate_w, const std::optional<at::Tensor>& gate_b,
               const std::optional<at::Tensor>& cell_w, const std::optional<at::Tensor>& cell_b,
               int64_t units) {
  const bool on = gate_w.has_value();
  TORCH_CHECK(gate_b.has_value() == on && cell_w.has_value() == on && cell_b.has_value() == on,
              "layer-norm gains and biases must be given all together or not at all");
  if (!on) return {};
  for (const auto* t : {&*gate_w, &*gate_b})
    TORCH_CHECK(t->is_contiguous() && t->numel() == kGates * units, "gate norm must be (4, N)");
  for (const auto* t : {&*cell_w, &*cell_b})
    TORCH_CHECK(t->is_contiguous() && t->numel() == units, "cell norm must be (N,)");
  return {gate_w->data_ptr<T>(), gate_b->data_ptr<T>(), cell_w->data_ptr<T>(),
          cell_b->data_ptr<T>()};
}

// Per-row scratch of the LSTM update: everything the backward pass recomputes.
template <typename T>
struct Scratch {
  std::vector<T> buffer;
  T *pre, *gates, *cell, *cell_hat, *tanh_cell;  // forward: 11n
  T *grad_cell, *work, *xhat, *grad_gates;        // backward: 7n
  T gate_mean[kGates], gate_rstd[kGates], cell_rstd;
  explicit Scratch(int64_t n) : buffer(static_cast<size_t>(18 * n)) {
    pre = buffer.data();        // 4n: pre-activations
    gates = pre + 4 * n;        // 4n: sigmoid(i, f, o), tanh(g)
    cell = gates + 4 * n;       // n: c_t
    cell_hat = cell + n;        // n: normalised c_t (layer norm only)
    tanh_cell = cell_hat + n;   // n
    grad_cell = tanh_cell + n;  // n: d c_t
    work = grad_cell + n;       // n
    xhat = work + n;            // n
    grad_gates = xhat + n;      // 4n
  }
};

// The LSTM update of one row from s.pre: fills s.gates, s.cell, s.cell_hat, s.tanh_cell.
template <typename T>
inline void lstm_row(Scratch<T>& s, const T* cell_prev, const T* mask, const Norms<T>& nm,
                     int64_t n) {
  for (int64_t k = 0; k < kGates; ++k) {
    const T* p = s.pre + k * n;
    T* a = s.gates + k * n;
    if (nm.on()) {
      T mean, rstd;
      moments(p, n, mean, rstd);
      s.gate_mean[k] = mean;
      s.gate_rstd[k] = rstd;
      const T* w = nm.gate_w + k * n;
      const T* b = nm.gate_b + k * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) a[j] = (p[j] - mean) * rstd * w[j] + b[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) a[j] = p[j];
    }
  }
  T* si = s.gates;
  T* sf = si + n;
  T* so = sf + n;
  T* tg = so + n;
#pragma omp simd
  for (int64_t j = 0; j < 3 * n; ++j) si[j] = sigmoid(si[j]);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    tg[j] = std::tanh(tg[j]);
    const T candidate = mask ? tg[j] * mask[j] : tg[j];
    s.cell[j] = sf[j] * cell_prev[j] + si[j] * candidate;
  }
  if (nm.on()) {
    T mean, rstd;
    moments(s.cell, n, mean, rstd);
    s.cell_rstd = rstd;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      s.cell_hat[j] = (s.cell[j] - mean) * rstd;
      s.tanh_cell[j] = std::tanh(s.cell_hat[j] * nm.cell_w[j] + nm.cell_b[j]);
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s.tanh_cell[j] = std::tanh(s.cell[j]);
  }
}

// Backward of lstm_row (after it ran on the same row): d pre-activation into grad_pre (4 rows
// at stride pre_stride), d c_{t-1}; per-row norm gradients added to norm_acc (10 rows at
// stride acc_stride) when layer norm is on.
template <typename T>
inline void lstm_row_backward(Scratch<T>& s, const T* grad_h, const T* grad_c,
                              const T* cell_prev, const T* mask, const Norms<T>& nm, int64_t n,
                              T* grad_pre, int64_t pre_stride, T* grad_cell_prev, T* norm_acc,
                              int64_t acc_stride) {
  const T* si = s.gates;
  const T* sf = si + n;
  const T* so = sf + n;
  const T* tg = so + n;
  T* grad_out = s.grad_cell;  // d c_t
  T* work = s.work;
  T* xhat = s.xhat;
  // d c_t
  if (nm.on()) {
    T* acc_w = norm_acc + 8 * acc_stride;
    T* acc_b = norm_acc + 9 * acc_stride;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T tc = s.tanh_cell[j];
      const T g = grad_h[j] * so[j] * (T(1) - tc * tc);
      acc_w[j] += g * s.cell_hat[j];
      acc_b[j] += g;
      work[j] = g * nm.cell_w[j];
    }
    layer_norm_backward(work, s.cell_hat, s.cell_rstd, n, grad_out);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) grad_out[j] += grad_c[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const T tc = s.tanh_cell[j];
      grad_out[j] = grad_c[j] + grad_h[j] * so[j] * (T(1) - tc * tc);
    }
  }
  // gate gradients before the gate norms: i, f, o (sigmoid), g (tanh)
  T* gi = s.grad_gates;
  T* gf = gi + n;
  T* go = gf + n;
  T* gg = go + n;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T gc = grad_out[j];
    const T candidate = mask ? tg[j] * mask[j] : tg[j];
    gi[j] = gc * candidate * si[j] * (T(1) - si[j]);
    gf[j] = gc * cell_prev[j] * sf[j] * (T(1) - sf[j]);
    go[j] = grad_h[j] * s.tanh_cell[j] * so[j] * (T(1) - so[j]);
    gg[j] = gc * si[j] * (mask ? mask[j] : T(1)) * (T(1) - tg[j] * tg[j]);
  }
  for (int64_t k = 0; k < kGates; ++k) {
    T* g = s.grad_gates + k * n;
    T* out = grad_pre + k * pre_stride;
    if (nm.on()) {
      const T* p = s.pre + k * n;
      const T mean = s.gate_mean[k], rstd = s.gate_rstd[k];
      const T* w = nm.gate_w + k * n;
      T* acc_w = norm_acc + k * acc_stride;
      T* acc_b = norm_acc + (4 + k) * acc_stride;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        xhat[j] = (p[j] - mean) * rstd;
        acc_w[j] += g[j] * xhat[j];
        acc_b[j] += g[j];
        g[j] *= w[j];
      }
      layer_norm_backward(g, xhat, rstd, n, out);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = g[j];
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) grad_cell_prev[j] = grad_out[j] * sf[j];
}

// Rows per parallel chunk: at least ATen's grain of elements (4N gate values per row), so a
// small batch (a decoding step) runs on one thread instead of paying a fork-join per kernel.
int64_t grain(int64_t units) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / (kGates * units));
}

// Parameter gradients are summed per thread, (rows, threads, N): each parallel chunk adds its
// batch rows into its own thread's slot, so no (rows, B, N) per-row buffer is read and written
// a step. The norm gradients have 10 rows, the main cell's bias gradient 4.
void check_thread_sums(const at::Tensor& sums, int64_t rows, int64_t n, const char* name) {
  check_rows(sums, 3, n, name);
  TORCH_CHECK(sums.size(0) == rows && sums.size(1) >= at::get_num_threads(), name, " must be (",
              rows, ", at least torch.get_num_threads(), N)");
}

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "the fused HyperLSTM kernels run on CPU tensors only");
}

// ---------------------------------------------------------------- layer-norm LSTM (hyper cell)

std::tuple<at::Tensor, at::Tensor> ln_lstm_cell(
    const at::Tensor& pre, const at::Tensor& cell_prev, const at::Tensor& gate_w,
    const at::Tensor& gate_b, const at::Tensor& cell_w, const at::Tensor& cell_b,
    const std::optional<at::Tensor>& g_mask) {
  check_cpu(pre);
  const int64_t batch = cell_prev.size(0), n = cell_prev.size(1);
  check_rows(pre, 3, n, "pre");
  check_rows(cell_prev, 2, n, "cell_prev");
  if (g_mask) check_rows(*g_mask, 2, n, "g_mask");
  auto hidden = at::empty({batch, n}, cell_prev.options());
  auto cell = at::empty({batch, n}, cell_prev.options());
  const auto body = [&](auto zero) {
    using T = decltype(zero);
    const auto nm = norms<T>(gate_w, gate_b, cell_w, cell_b, n);
    const auto p = rows3<T>(pre);
    const auto cp = rows2<T>(cell_prev);
    const T* mask = g_mask ? g_mask->data_ptr<T>() : nullptr;
    const int64_t mask_stride = g_mask ? g_mask->stride(0) : 0;
    T* h_out = hidden.data_ptr<T>();
    T* c_out = cell.data_ptr<T>();
    at::parallel_for(0, batch, grain(n), [&](int64_t begin, int64_t end) {
      Scratch<T> s(n);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t k = 0; k < kGates; ++k)
          std::copy(p.at(k, b), p.at(k, b) + n, s.pre + k * n);
        lstm_row(s, cp.at(b), mask ? mask + b * mask_stride : nullptr, nm, n);
        const T* so = s.gates + 2 * n;
        T* h = h_out + b * n;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) h[j] = so[j] * s.tanh_cell[j];
        std::copy(s.cell, s.cell + n, c_out + b * n);
      }
    });
  };
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "ln_lstm_cell", [&] { body(scalar_t(0)); });
  return {hidden, cell};
}

void ln_lstm_cell_backward(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& pre,
    const at::Tensor& cell_prev, const at::Tensor& gate_w, const at::Tensor& gate_b,
    const at::Tensor& cell_w, const at::Tensor& cell_b, const std::optional<at::Tensor>& g_mask,
    at::Tensor& grad_pre, at::Tensor& grad_cell_prev, at::Tensor& norm_grads) {
  check_cpu(pre);
  const int64_t batch = cell_prev.size(0), n = cell_prev.size(1);
  for (const at::Tensor* t : {&grad_h, &grad_c, &cell_prev, static_cast<const at::Tensor*>(&grad_cell_prev)}) check_rows(*t, 2, n, "state");
  check_rows(pre, 3, n, "pre");
  check_rows(grad_pre, 3, n, "grad_pre");
  check_thread_sums(norm_grads, kNormRows, n, "norm_grads");
  if (g_mask) check_rows(*g_mask, 2, n, "g_mask");
  const auto body = [&](auto zero) {
    using T = decltype(zero);
    const auto nm = norms<T>(gate_w, gate_b, cell_w, cell_b, n);
    const auto p = rows3<T>(pre);
    const auto gp = rows3<T>(grad_pre);
    const auto acc = rows3<T>(norm_grads);
    const auto gh = rows2<T>(grad_h), gc = rows2<T>(grad_c), cp = rows2<T>(cell_prev);
    const auto gcp = rows2<T>(grad_cell_prev);
    const T* mask = g_mask ? g_mask->data_ptr<T>() : nullptr;
    const int64_t mask_stride = g_mask ? g_mask->stride(0) : 0;
    at::parallel_for(0, batch, grain(n), [&](int64_t begin, int64_t end) {
      Scratch<T> s(n);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t k = 0; k < kGates; ++k)
          std::copy(p.at(k, b), p.at(k, b) + n, s.pre + k * n);
        const T* m = mask ? mask + b * mask_stride : nullptr;
        lstm_row(s, cp.at(b), m, nm, n);
        lstm_row_backward(s, gh.at(b), gc.at(b), cp.at(b), m, nm, n, gp.at(0, b), gp.s0,
                          gcp.at(b), acc.at(0, at::get_thread_num()), acc.s0);
      }
    });
  };
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "ln_lstm_cell_backward", [&] { body(scalar_t(0)); });
}

// ------------------------------------------------------------------ HyperLSTM main cell

// pre = d[8 + k] + bias[k] + d[k] * h_part[k] + d[4 + k] * x_main[k], into s.pre
template <typename T>
inline void main_pre(Scratch<T>& s, const Rows3<T>& hp, const Rows3<T>& xm, const Rows3<T>& d,
                     const T* bias, int64_t b, int64_t n) {
  for (int64_t k = 0; k < kGates; ++k) {
    const T* h = hp.at(k, b);
    const T* x = xm.at(k, b);
    const T* dh = d.at(k, b);
    const T* dx = d.at(4 + k, b);
    const T* db = d.at(8 + k, b);
    const T* b0 = bias + k * n;
    T* p = s.pre + k * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) p[j] = db[j] + b0[j] + dh[j] * h[j] + dx[j] * x[j];
  }
}

void check_main(const at::Tensor& h_part, const at::Tensor& x_main, const at::Tensor& d,
                const at::Tensor& bias, const at::Tensor& cell_prev) {
  check_cpu(cell_prev);
  const int64_t n = cell_prev.size(1);
  check_rows(cell_prev, 2, n, "cell_prev");
  check_rows(h_part, 3, n, "h_part");
  check_rows(x_main, 3, n, "x_main");
  check_rows(d, 3, n, "d");
  TORCH_CHECK(d.size(0) == kScales, "d must be (12, B, N)");
  TORCH_CHECK(bias.is_contiguous() && bias.numel() == kGates * n, "bias must be (4, N)");
}

std::tuple<at::Tensor, at::Tensor> hyper_main_cell(
    const at::Tensor& h_part, const at::Tensor& x_main, const at::Tensor& d,
    const at::Tensor& bias, const at::Tensor& cell_prev, const std::optional<at::Tensor>& gate_w,
    const std::optional<at::Tensor>& gate_b, const std::optional<at::Tensor>& cell_w,
    const std::optional<at::Tensor>& cell_b, const std::optional<at::Tensor>& g_mask) {
  check_main(h_part, x_main, d, bias, cell_prev);
  const int64_t batch = cell_prev.size(0), n = cell_prev.size(1);
  if (g_mask) check_rows(*g_mask, 2, n, "g_mask");
  auto hidden = at::empty({batch, n}, cell_prev.options());
  auto cell = at::empty({batch, n}, cell_prev.options());
  const auto body = [&](auto zero) {
    using T = decltype(zero);
    const auto nm = norms<T>(gate_w, gate_b, cell_w, cell_b, n);
    const auto hp = rows3<T>(h_part), xm = rows3<T>(x_main), dd = rows3<T>(d);
    const auto cp = rows2<T>(cell_prev);
    const T* b0 = bias.data_ptr<T>();
    const T* mask = g_mask ? g_mask->data_ptr<T>() : nullptr;
    const int64_t mask_stride = g_mask ? g_mask->stride(0) : 0;
    T* h_out = hidden.data_ptr<T>();
    T* c_out = cell.data_ptr<T>();
    at::parallel_for(0, batch, grain(n), [&](int64_t begin, int64_t end) {
      Scratch<T> s(n);
      for (int64_t b = begin; b < end; ++b) {
        main_pre(s, hp, xm, dd, b0, b, n);
        lstm_row(s, cp.at(b), mask ? mask + b * mask_stride : nullptr, nm, n);
        const T* so = s.gates + 2 * n;
        T* h = h_out + b * n;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) h[j] = so[j] * s.tanh_cell[j];
        std::copy(s.cell, s.cell + n, c_out + b * n);
      }
    });
  };
  AT_DISPATCH_FLOATING_TYPES(cell_prev.scalar_type(), "hyper_main_cell", [&] { body(scalar_t(0)); });
  return {hidden, cell};
}

void hyper_main_cell_backward(
    const at::Tensor& grad_h, const at::Tensor& grad_c, const at::Tensor& h_part,
    const at::Tensor& x_main, const at::Tensor& d, const at::Tensor& bias,
    const at::Tensor& cell_prev, const std::optional<at::Tensor>& gate_w,
    const std::optional<at::Tensor>& gate_b, const std::optional<at::Tensor>& cell_w,
    const std::optional<at::Tensor>& cell_b, const std::optional<at::Tensor>& g_mask,
    at::Tensor& grad_h_part, at::Tensor& grad_x_main, at::Tensor& grad_d,
    at::Tensor& grad_cell_prev, at::Tensor& norm_grads, at::Tensor& bias_grads) {
  check_main(h_part, x_main, d, bias, cell_prev);
  const int64_t batch = cell_prev.size(0), n = cell_prev.size(1);
  for (const at::Tensor* t : {&grad_h, &grad_c, static_cast<const at::Tensor*>(&grad_cell_prev)}) check_rows(*t, 2, n, "state");
  check_rows(grad_h_part, 3, n, "grad_h_part");
  check_rows(grad_x_main, 3, n, "grad_x_main");
  check_rows(grad_d, 3, n, "grad_d");
  check_thread_sums(bias_grads, kGates, n, "bias_grads");
  if (g_mask) check_rows(*g_mask, 2, n, "g_mask");
  const bool layer_norm = gate_w.has_value();
  if (layer_norm) check_thread_sums(norm_grads, kNormRows, n, "norm_grads");
  const auto body = [&](auto zero) {
    using T = decltype(zero);
    const auto nm = norms<T>(gate_w, gate_b, cell_w, cell_b, n);
    const auto hp = rows3<T>(h_part), xm = rows3<T>(x_main), dd = rows3<T>(d);
    const auto ghp = rows3<T>(grad_h_part), gxm = rows3<T>(grad_x_main);
    const auto gd = rows3<T>(grad_d), gb = rows3<T>(bias_grads);
    const auto gh = rows2<T>(grad_h), gc = rows2<T>(grad_c), cp = rows2<T>(cell_prev);
    const auto gcp = rows2<T>(grad_cell_prev);
    const Rows3<T> acc = layer_norm ? rows3<T>(norm_grads) : Rows3<T>{nullptr, 0, 0};
    const T* b0 = bias.data_ptr<T>();
    const T* mask = g_mask ? g_mask->data_ptr<T>() : nullptr;
    const int64_t mask_stride = g_mask ? g_mask->stride(0) : 0;
    at::parallel_for(0, batch, grain(n), [&](int64_t begin, int64_t end) {
      Scratch<T> s(n);
      std::vector<T> grad_pre(static_cast<size_t>(kGates * n));
      const int64_t slot = at::get_thread_num();
      for (int64_t b = begin; b < end; ++b) {
        main_pre(s, hp, xm, dd, b0, b, n);
        const T* m = mask ? mask + b * mask_stride : nullptr;
        lstm_row(s, cp.at(b), m, nm, n);
        lstm_row_backward(s, gh.at(b), gc.at(b), cp.at(b), m, nm, n, grad_pre.data(), n,
                          gcp.at(b), layer_norm ? acc.at(0, slot) : nullptr, acc.s0);
        for (int64_t k = 0; k < kGates; ++k) {
          const T* g = grad_pre.data() + k * n;
          const T* h = hp.at(k, b);
          const T* x = xm.at(k, b);
          const T* dh = dd.at(k, b);
          const T* dx = dd.at(4 + k, b);
          T* g_dh = gd.at(k, b);
          T* g_dx = gd.at(4 + k, b);
          T* g_db = gd.at(8 + k, b);
          T* g_h = ghp.at(k, b);
          T* g_x = gxm.at(k, b);
          T* g_b = gb.at(k, slot);
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            g_dh[j] = g[j] * h[j];
            g_dx[j] = g[j] * x[j];
            g_db[j] = g[j];
            g_b[j] += g[j];
            g_h[j] = g[j] * dh[j];
            g_x[j] = g[j] * dx[j];
          }
        }
      }
    });
  };
  AT_DISPATCH_FLOATING_TYPES(cell_prev.scalar_type(), "hyper_main_cell_backward", [&] { body(scalar_t(0)); });
}

}  // namespace

TORCH_LIBRARY(hypernmt, m) {
  m.def(
      "ln_lstm_cell(Tensor pre, Tensor cell_prev, Tensor gate_w, Tensor gate_b, Tensor cell_w, "
      "Tensor cell_b, Tensor? g_mask) -> (Tensor, Tensor)");
  m.def(
      "ln_lstm_cell_backward(Tensor grad_h, Tensor grad_c, Tensor pre, Tensor cell_prev, "
      "Tensor gate_w, Tensor gate_b, Tensor cell_w, Tensor cell_b, Tensor? g_mask, "
      "Tensor(a!) grad_pre, Tensor(b!) grad_cell_prev, Tensor(c!) norm_grads) -> ()");
  m.def(
      "hyper_main_cell(Tensor h_part, Tensor x_main, Tensor d, Tensor bias, Tensor cell_prev, "
      "Tensor? gate_w, Tensor? gate_b, Tensor? cell_w, Tensor? cell_b, Tensor? g_mask) "
      "-> (Tensor, Tensor)");
  m.def(
      "hyper_main_cell_backward(Tensor grad_h, Tensor grad_c, Tensor h_part, Tensor x_main, "
      "Tensor d, Tensor bias, Tensor cell_prev, Tensor? gate_w, Tensor? gate_b, "
      "Tensor? cell_w, Tensor? cell_b, Tensor? g_mask, Tensor(a!) grad_h_part, "
      "Tensor(b!) grad_x_main, Tensor(c!) grad_d, Tensor(d!) grad_cell_prev, "
      "Tensor(e!) norm_grads, Tensor(f!) bias_grads) -> ()");
}

TORCH_LIBRARY_IMPL(hypernmt, CPU, m) {
  m.impl("ln_lstm_cell", &ln_lstm_cell);
  m.impl("ln_lstm_cell_backward", &ln_lstm_cell_backward);
  m.impl("hyper_main_cell", &hyper_main_cell);
  m.impl("hyper_main_cell_backward", &hyper_main_cell_backward);
}
