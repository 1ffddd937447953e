// Shared by c10d_shim.cpp and c10d_shim_nccl.cpp: the handle types and the exception guard.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <c10/util/Exception.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "c10d_shim.h"

namespace rx {

inline char* dup_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, message.c_str(), message.size() + 1);
  }
  return out;
}

// Runs `body`, turning any exception into a status and a message.
template <typename F>
rx_status guarded(char** err, F&& body) {
  if (err != nullptr) {
    *err = nullptr;
  }
  rx_status status = RX_OK;
  std::string message;
  try {
    body();
    return RX_OK;
  } catch (const c10::DistNetworkError& e) {
    status = RX_ERR_NETWORK;
    message = e.what_without_backtrace();
  } catch (const c10::DistStoreError& e) {
    status = RX_ERR_STORE;
    message = e.what_without_backtrace();
  } catch (const c10::DistBackendError& e) {
    status = RX_ERR_BACKEND;
    message = e.what_without_backtrace();
  } catch (const c10::Error& e) {
    status = RX_ERR_TORCH;
    message = e.what_without_backtrace();
  } catch (const std::exception& e) {
    status = RX_ERR_OTHER;
    message = e.what();
  } catch (...) {
    status = RX_ERR_OTHER;
    message = "unknown C++ exception";
  }
  if (err != nullptr) {
    *err = dup_message(message);
  }
  return status;
}

inline std::chrono::milliseconds ms(int64_t timeout_ms) {
  return std::chrono::milliseconds(timeout_ms);
}

// Waits for a collective; `wait` rethrows the collective's exception. The explicit timeout is a
// backstop beside the backend's own (gloo's context timeout / NCCL's watchdog).
inline void wait_for(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms) {
  work->wait(ms(timeout_ms));
}

}  // namespace rx

struct rx_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct rx_group {
  c10::intrusive_ptr<c10d::Backend> backend;
  int64_t timeout_ms;
};

