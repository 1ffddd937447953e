// A C ABI over libtorch's c10d (TCPStore, FileStore, ProcessGroupGloo; ProcessGroupNCCL in
// c10d_shim_nccl.cpp), for src/distributed/. Built by build.rs with the `cc` crate.
//
// Conventions:
// * every function that can fail returns an `rx_status` (0: success) and, on failure, stores a
//   message allocated with malloc in `*err` (src/shim.rs reads it and frees it with free()).
//   No C++ exception ever crosses this boundary: each entry point catches everything.
// * tensors are tch's `*mut C_tensor`, which are `at::Tensor*`.
// * timeouts are in milliseconds.
//
// Only symbols that libtorch_cpu.so exports are called (TCPStore, FileStore, PrefixStore,
// ProcessGroupGloo's constructor, Options, create_default and createDeviceForHostname, and the
// virtual collectives of c10d::Backend). The gloo
// headers that ProcessGroupGloo.hpp includes come from Debian's libgloo-dev (a 2022 snapshot;
// libtorch was built against a newer gloo), so nothing here touches gloo's own types beyond
// declarations: the objects whose layout depends on gloo are built inside libtorch.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <c10/util/Exception.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "c10d_shim.h"
#include "c10d_shim_impl.hpp"

using namespace rx;

extern "C" {

rx_status rx_store_create(
    const char* host,
    uint16_t port,
    int is_server,
    int listen_fd,
    int world_size,
    int64_t timeout_ms,
    const char* prefix,
    rx_store** out,
    char** err) {
  return guarded(err, [&] {
    *out = nullptr;
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    // The server listens on the socket the caller bound (to MASTER_ADDR's address), not on
    // every interface as TCPStore would, and with no gap between choosing the port and binding.
    if (opts.isServer && listen_fd >= 0) {
      opts.masterListenFd = listen_fd;
    }
    opts.numWorkers = static_cast<std::size_t>(world_size);
    // Every rank counts itself in, and the server waits until all have (within the timeout): a
    // missing rank shows up here rather than in the first collective.
    opts.waitWorkers = true;
    opts.timeout = ms(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    *out = new rx_store{std::move(store)};
  });
}

rx_status rx_store_create_file(
    const char* path,
    int world_size,
    int64_t timeout_ms,
    rx_store** out,
    char** err) {
  return guarded(err, [&] {
    *out = nullptr;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::FileStore>(std::string(path), world_size);
    // Bounds every wait for a key (a rank that never comes), as TCPStore's timeout does.
    store->setTimeout(ms(timeout_ms));
    *out = new rx_store{std::move(store)};
  });
}

rx_status rx_store_prefixed(
    rx_store* base,
    const char* prefix,
    rx_store** out,
    char** err) {
  return guarded(err, [&] {
    *out = nullptr;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base->store);
    *out = new rx_store{std::move(store)};
  });
}

void rx_store_destroy(rx_store* store) {
  try {
    delete store;
  } catch (...) {
  }
}

rx_status rx_group_gloo_create(
    rx_store* store,
    int rank,
    int world_size,
    int64_t timeout_ms,
    const char* host,
    rx_group** out,
    char** err) {
  return guarded(err, [&] {
    *out = nullptr;
    c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options;
    if (host != nullptr && host[0] != '\0') {
      // One device bound to `host` (its listening socket and every pair's), connected at once
      // so that the caller can check the pairs' peers when this returns.
      options = c10d::ProcessGroupGloo::Options::create(ms(timeout_ms));
      options->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(std::string(host), false));
    } else {
      // create_default picks the network interface as torch.distributed does:
      // GLOO_SOCKET_IFNAME if set, else the address this host's name resolves to, else the
      // loopback.
      options = c10d::ProcessGroupGloo::Options::create_default(ms(timeout_ms));
    }
    c10::intrusive_ptr<c10d::Backend> backend =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store->store, rank, world_size, options);
    *out = new rx_group{std::move(backend), timeout_ms};
  });
}

void rx_group_destroy(rx_group* group) {
  try {
    delete group;
  } catch (...) {
  }
}

rx_status rx_group_all_reduce(
    rx_group* group,
    void* tensor,
    int op,
    char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    switch (op) {
      case RX_OP_SUM:
        opts.reduceOp = c10d::ReduceOp::SUM;
        break;
      case RX_OP_AVG:
        opts.reduceOp = c10d::ReduceOp::AVG;
        break;
      case RX_OP_MAX:
        opts.reduceOp = c10d::ReduceOp::MAX;
        break;
      case RX_OP_MIN:
        opts.reduceOp = c10d::ReduceOp::MIN;
        break;
      default:
        throw std::invalid_argument("unknown reduce op " + std::to_string(op));
    }
    opts.timeout = ms(group->timeout_ms);
    wait_for(group->backend->allreduce(tensors, opts), group->timeout_ms);
  });
}

rx_status rx_group_broadcast(rx_group* group, void* tensor, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    opts.timeout = ms(group->timeout_ms);
    wait_for(group->backend->broadcast(tensors, opts), group->timeout_ms);
  });
}

rx_status rx_group_all_gather(
    rx_group* group,
    const void* input,
    void* const* outputs,
    int n_outputs,
    char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> inputs{*static_cast<const at::Tensor*>(input)};
    std::vector<std::vector<at::Tensor>> outs(1);
    outs[0].reserve(static_cast<std::size_t>(n_outputs));
    for (int i = 0; i < n_outputs; ++i) {
      outs[0].push_back(*static_cast<at::Tensor*>(outputs[i]));
    }
    c10d::AllgatherOptions opts;
    opts.timeout = ms(group->timeout_ms);
    wait_for(group->backend->allgather(outs, inputs, opts), group->timeout_ms);
  });
}

rx_status rx_group_barrier(rx_group* group, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = ms(group->timeout_ms);
    wait_for(group->backend->barrier(opts), group->timeout_ms);
  });
}

}  // extern "C"
