// The NCCL part of the c10d shim (see c10d_shim.cpp): compiled only with the `nccl` cargo
// feature, against a CUDA libtorch, NCCL's header (the wheel's nvidia/nccl/include) and CUDA's
// headers. Collectives go through the same rx_group_* functions as Gloo's.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "c10d_shim.h"
#include "c10d_shim_impl.hpp"

using namespace rx;

extern "C" {

rx_status rx_group_nccl_create(
    rx_store* store,
    int rank,
    int world_size,
    int64_t timeout_ms,
    rx_group** out,
    char** err) {
  return guarded(err, [&] {
    *out = nullptr;
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Backend> backend =
        c10::make_intrusive<c10d::ProcessGroupNCCL>(store->store, rank, world_size, options);
    *out = new rx_group{std::move(backend), timeout_ms};
  });
}

}  // extern "C"
