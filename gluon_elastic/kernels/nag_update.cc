// Nesterov momentum updates for MXNet's custom-operator library API (mxnet/lib_api.h).
//
// MXNet 1.9.1's nag_mom_update and mp_nag_mom_update write the new weight in place and then read
// it back for the weight-decay term of the momentum. These kernels read every input element once,
// before anything is written, so they run in place (out = weight) and give, per element,
//
//   g' = clip(rescale_grad * grad) + wd * w
//   v  = momentum * (momentum_scale * v) - lr * g'
//   w  = w + momentum * v - lr * g'
//
// in float32 arithmetic (float64 for float64 weights), like MXNet's own kernels. momentum_scale
// (default 1) is the momentum correction of a changed LR (v = -lr * u), folded into the same pass.
//
// Each call updates a group of parameters (multi-tensor, like MXNet's multi_sgd_mom_update), so
// the cost of an operator call is paid once per group:
//
//   _gluon_elastic_multi_nag_update(w_0, g_0, v_0, w_1, g_1, v_1, ..., out=[w_0, w_1, ...],
//       num_weights=n, lrs=(...), wds=(...), momentum=, rescale_grad=, clip_gradient=,
//       momentum_scale=)                          float32 or float64 weights
//   _gluon_elastic_multi_mp_nag_update(w16_0, g16_0, v_0, w32_0, ..., out=[w16_0, ...], ...)
//                                                 float16 weights, float32 momentum and masters
//
// Built and loaded by gluon_elastic.kernels; used by gluon_elastic.optimizers.ElasticNAG.
#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::MX_FAIL;
using Attributes = std::unordered_map<std::string, std::string>;

namespace {

struct Hyper {
  double momentum, rescale_grad, clip_gradient, momentum_scale;
  std::vector<double> lrs, wds;
};

double attribute(const Attributes& attrs, const char* name, double fallback) {
  auto found = attrs.find(name);
  return found == attrs.end() ? fallback : std::stod(found->second);
}

int num_weights(const Attributes& attrs) {
  auto found = attrs.find("num_weights");
  return found == attrs.end() ? 1 : std::stoi(found->second);
}

// "(0.1, 0.2)" or "[0.1, 0.2]" or "0.1" (how MXNet passes a Python tuple) -> {0.1, 0.2}
std::vector<double> numbers(const Attributes& attrs, const char* name) {
  std::vector<double> out;
  auto found = attrs.find(name);
  if (found == attrs.end()) return out;
  std::string text = found->second;
  for (char& c : text) {
    if (c == '(' || c == ')' || c == '[' || c == ']' || c == ',') c = ' ';
  }
  std::istringstream stream(text);
  std::string item;
  while (stream >> item) out.push_back(std::stod(item));
  return out;
}

bool parse(const Attributes& attrs, Hyper* h) {
  h->momentum = attribute(attrs, "momentum", 0.0);
  h->rescale_grad = attribute(attrs, "rescale_grad", 1.0);
  h->clip_gradient = attribute(attrs, "clip_gradient", -1.0);
  h->momentum_scale = attribute(attrs, "momentum_scale", 1.0);
  h->lrs = numbers(attrs, "lrs");
  h->wds = numbers(attrs, "wds");
  const size_t n = static_cast<size_t>(num_weights(attrs));
  if (h->lrs.size() != n || h->wds.size() != n) {
    MX_ERROR_MSG << "lrs and wds must hold num_weights=" << n << " values";
    return false;
  }
  return true;
}

// One element: reads weight, grad and momentum, returns the new weight, updates the momentum.
template <typename Real>
inline Real step(Real weight, Real grad, Real* momentum, const Hyper& h, Real lr, Real wd) {
  Real g = static_cast<Real>(h.rescale_grad) * grad;
  if (h.clip_gradient >= 0) {
    const Real bound = static_cast<Real>(h.clip_gradient);
    g = std::min(std::max(g, -bound), bound);
  }
  g += wd * weight;
  const Real mu = static_cast<Real>(h.momentum);
  const Real v = mu * (static_cast<Real>(h.momentum_scale) * *momentum) - lr * g;
  *momentum = v;
  return weight + mu * v - lr * g;
}

template <typename Real>
void update(MXTensor* weight, MXTensor* grad, MXTensor* momentum, MXTensor* out,
            const Hyper& h, size_t index) {
  // out may be weight: element i is read before it is written.
  const Real* w = weight->data<Real>();
  const Real* g = grad->data<Real>();
  Real* v = momentum->data<Real>();
  Real* o = out->data<Real>();
  const Real lr = static_cast<Real>(h.lrs[index]), wd = static_cast<Real>(h.wds[index]);
  const int64_t size = weight->size();
  for (int64_t i = 0; i < size; ++i) o[i] = step<Real>(w[i], g[i], v + i, h, lr, wd);
}

// Inputs per weight: 3 (weight, grad, momentum) or 4 (+ float32 master weight).
template <int kStride>
MXReturnValue parse_attrs(const Attributes& attrs, int* num_in, int* num_out) {
  const int n = num_weights(attrs);
  if (n < 1) {
    MX_ERROR_MSG << "num_weights must be >= 1";
    return MX_FAIL;
  }
  *num_in = kStride * n;
  *num_out = n;
  return MX_SUCCESS;
}

template <int kStride>
MXReturnValue infer_shape(const Attributes& attrs, std::vector<std::vector<unsigned>>* in_shapes,
                          std::vector<std::vector<unsigned>>* out_shapes) {
  for (size_t k = 0; k < out_shapes->size(); ++k) {
    const auto& shape = in_shapes->at(kStride * k);
    for (int j = 1; j < kStride; ++j) {
      if (in_shapes->at(kStride * k + j) != shape) {
        MX_ERROR_MSG << "the arrays of weight " << k << " differ in shape";
        return MX_FAIL;
      }
    }
    out_shapes->at(k) = shape;
  }
  return MX_SUCCESS;
}

template <int kStride>
MXReturnValue mutate(const Attributes& attrs, std::vector<int>* input_indices) {
  const int n = num_weights(attrs);
  for (int k = 0; k < n; ++k) {
    input_indices->push_back(kStride * k + 2);                      // momentum
    if (kStride == 4) input_indices->push_back(kStride * k + 3);    // master weight
  }
  return MX_SUCCESS;
}

// --------------------------------------------------------------- _gluon_elastic_multi_nag_update
MXReturnValue nag_type(const Attributes& attrs, std::vector<int>* in_types,
                       std::vector<int>* out_types) {
  const int dtype = in_types->at(0);
  if (dtype != mxnet::ext::kFloat32 && dtype != mxnet::ext::kFloat64) {
    MX_ERROR_MSG << "_gluon_elastic_multi_nag_update takes float32 or float64 weights";
    return MX_FAIL;
  }
  for (int t : *in_types) {
    if (t != dtype) {
      MX_ERROR_MSG << "_gluon_elastic_multi_nag_update: the arrays differ in type";
      return MX_FAIL;
    }
  }
  for (auto& t : *out_types) t = dtype;
  return MX_SUCCESS;
}

MXReturnValue nag_forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                          std::vector<MXTensor>* outputs, const OpResource& res) {
  Hyper h;
  if (!parse(attrs, &h)) return MX_FAIL;
  for (size_t k = 0; k < outputs->size(); ++k) {
    MXTensor* in = &inputs->at(3 * k);
    if (in->dtype == mxnet::ext::kFloat64) {
      update<double>(in, in + 1, in + 2, &outputs->at(k), h, k);
    } else {
      update<float>(in, in + 1, in + 2, &outputs->at(k), h, k);
    }
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------ _gluon_elastic_multi_mp_nag_update
MXReturnValue mp_type(const Attributes& attrs, std::vector<int>* in_types,
                      std::vector<int>* out_types) {
  for (size_t k = 0; k < out_types->size(); ++k) {
    if (in_types->at(4 * k) != mxnet::ext::kFloat16 ||
        in_types->at(4 * k + 1) != mxnet::ext::kFloat16 ||
        in_types->at(4 * k + 2) != mxnet::ext::kFloat32 ||
        in_types->at(4 * k + 3) != mxnet::ext::kFloat32) {
      MX_ERROR_MSG << "_gluon_elastic_multi_mp_nag_update takes float16 weights and grads, "
                      "float32 momenta and master weights";
      return MX_FAIL;
    }
    out_types->at(k) = mxnet::ext::kFloat16;
  }
  return MX_SUCCESS;
}

MXReturnValue mp_forward(const Attributes& attrs, std::vector<MXTensor>* inputs,
                         std::vector<MXTensor>* outputs, const OpResource& res) {
  Hyper h;
  if (!parse(attrs, &h)) return MX_FAIL;
  for (size_t k = 0; k < outputs->size(); ++k) {
    // _Float16 converts with IEEE round-to-nearest-even, as MXNet's float16 cast does.
    const _Float16* g = inputs->at(4 * k + 1).data<_Float16>();
    float* v = inputs->at(4 * k + 2).data<float>();
    float* master = inputs->at(4 * k + 3).data<float>();
    _Float16* o = outputs->at(k).data<_Float16>();
    const float lr = static_cast<float>(h.lrs[k]), wd = static_cast<float>(h.wds[k]);
    const int64_t size = inputs->at(4 * k).size();
    for (int64_t i = 0; i < size; ++i) {
      master[i] = step<float>(master[i], static_cast<float>(g[i]), v + i, h, lr, wd);
      o[i] = static_cast<_Float16>(master[i]);
    }
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(_gluon_elastic_multi_nag_update)
.setParseAttrs(parse_attrs<3>)
.setInferType(nag_type)
.setInferShape(infer_shape<3>)
.setMutateInputs(mutate<3>)
.setForward(nag_forward, "cpu");

REGISTER_OP(_gluon_elastic_multi_mp_nag_update)
.setParseAttrs(parse_attrs<4>)
.setInferType(mp_type)
.setInferShape(infer_shape<4>)
.setMutateInputs(mutate<4>)
.setForward(mp_forward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10900) return MX_SUCCESS;
  MX_ERROR_MSG << "gluon_elastic's kernels need MXNet 1.9 or newer, got " << version;
  return MX_FAIL;
}
