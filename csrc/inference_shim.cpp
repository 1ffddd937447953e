// A C ABI over libtorch's oneDNN convolutions with fused post-operations
// (`mkldnn::_convolution_pointwise` and its in-place binary form), for src/inference/fused.rs.
// Built by build.rs with the `cc` crate, beside c10d_shim.cpp.
//
// These operators are registered with libtorch's dispatcher by the CPU build's mkldnn code (the
// kernels torch.compile's CPU backend uses); they have no C++ declaration in the installed
// headers and no tch binding, so they are looked up by name and called boxed (arguments as
// IValues, checked against the registered schema by the dispatcher itself). A libtorch without
// them answers 0 to rx_infer_fused_available and the Rust side takes its other path.
//
// Conventions (as c10d_shim.cpp): tensors are tch's `*mut C_tensor`, which are `at::Tensor*`;
// a new tensor is returned as a `new at::Tensor` that the Rust side owns (tch frees it); every
// entry point catches every exception and returns 0 on success, else 1 with a malloc'd message
// in `*err` (the Rust side frees it with free()).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace {

char* dup_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

template <typename F>
int guarded(char** err, F&& body) {
  *err = nullptr;
  std::string message;
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
    message = "unknown C++ exception";
  }
  *err = dup_message(message);
  return 1;
}

std::optional<c10::OperatorHandle> find(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchema({name, overload});
}

c10::OperatorHandle required(const char* name, const char* overload) {
  auto handle = find(name, overload);
  TORCH_CHECK(handle.has_value(), "operator not registered: ", name, ".", overload);
  return *handle;
}

// The operators, looked up once (function-local statics: thread-safe initialisation).
const c10::OperatorHandle& conv_op() {
  static const c10::OperatorHandle handle = required("mkldnn::_convolution_pointwise", "");
  return handle;
}

const c10::OperatorHandle& conv_add_op() {
  static const c10::OperatorHandle handle =
      required("mkldnn::_convolution_pointwise_", "binary");
  return handle;
}

std::vector<int64_t> pair(const int64_t* values) { return {values[0], values[1]}; }

c10::IValue optional_tensor(const at::Tensor* t) {
  return t == nullptr ? c10::IValue() : c10::IValue(*t);
}

}  // namespace

extern "C" {

// 1 when both fused convolution operators are registered (a CPU build of libtorch with mkldnn).
int rx_infer_fused_available() {
  return find("mkldnn::_convolution_pointwise", "").has_value() &&
                 find("mkldnn::_convolution_pointwise_", "binary").has_value()
             ? 1
             : 0;
}

// conv2d(x, weight, bias) followed by `attr` ("none" or "relu"); weight as prepacked by
// mkldnn_reorder_conv2d_weight (or dense); padding, stride, dilation: 2 values each.
int rx_infer_conv(const void* x, const void* weight, const void* bias, const int64_t* padding,
                  const int64_t* stride, const int64_t* dilation, int64_t groups,
                  const char* attr, void** out, char** err) {
  return guarded(err, [&] {
    *out = nullptr;
    torch::jit::Stack stack;
    stack.reserve(10);
    stack.emplace_back(*static_cast<const at::Tensor*>(x));
    stack.emplace_back(*static_cast<const at::Tensor*>(weight));
    stack.push_back(optional_tensor(static_cast<const at::Tensor*>(bias)));
    stack.emplace_back(pair(padding));
    stack.emplace_back(pair(stride));
    stack.emplace_back(pair(dilation));
    stack.emplace_back(groups);
    stack.emplace_back(std::string(attr));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back();  // algorithm: none
    conv_op().callBoxed(&stack);
    TORCH_CHECK(stack.size() == 1 && stack[0].isTensor(), "unexpected result");
    *out = new at::Tensor(stack[0].toTensor());
  });
}

// other += conv2d(x, weight, bias), in place (oneDNN's sum post-operation): `other` must have
// the output's shape, kind and memory format.
int rx_infer_conv_add_(void* other, const void* x, const void* weight, const void* bias,
                       const int64_t* padding, const int64_t* stride, const int64_t* dilation,
                       int64_t groups, char** err) {
  return guarded(err, [&] {
    torch::jit::Stack stack;
    stack.reserve(13);
    stack.emplace_back(*static_cast<at::Tensor*>(other));
    stack.emplace_back(*static_cast<const at::Tensor*>(x));
    stack.emplace_back(*static_cast<const at::Tensor*>(weight));
    stack.push_back(optional_tensor(static_cast<const at::Tensor*>(bias)));
    stack.emplace_back(pair(padding));
    stack.emplace_back(pair(stride));
    stack.emplace_back(pair(dilation));
    stack.emplace_back(groups);
    stack.emplace_back(std::string("add"));
    stack.emplace_back(at::Scalar(1.0));  // alpha
    stack.emplace_back();                 // no unary post-operation (not supported in place)
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back();  // unary algorithm: none
    conv_add_op().callBoxed(&stack);
  });
}

}  // extern "C"
