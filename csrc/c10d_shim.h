/* The C ABI of c10d_shim.cpp (and c10d_shim_nccl.cpp), mirrored by src/distributed/ffi.rs. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 0 on success; otherwise the kind of C++ exception that was caught. */
typedef int rx_status;
#define RX_OK 0
#define RX_ERR_NETWORK 1 /* c10::DistNetworkError */
#define RX_ERR_STORE 2   /* c10::DistStoreError */
#define RX_ERR_BACKEND 3 /* c10::DistBackendError */
#define RX_ERR_TORCH 4   /* any other c10::Error */
#define RX_ERR_OTHER 5   /* any other exception */

#define RX_OP_SUM 0
#define RX_OP_AVG 1
#define RX_OP_MAX 2
#define RX_OP_MIN 3

typedef struct rx_store rx_store;
typedef struct rx_group rx_group;

/* A TCPStore. The server (is_server != 0) takes over listen_fd, a socket bound and listening on
   the address to serve (it closes it); listen_fd is -1 for a client. */
rx_status rx_store_create(const char* host, uint16_t port, int is_server, int listen_fd,
                          int world_size, int64_t timeout_ms, const char* prefix, rx_store** out,
                          char** err);
/* A FileStore: the file `path` (created if missing), shared by `world_size` processes. */
rx_status rx_store_create_file(const char* path, int world_size, int64_t timeout_ms,
                               rx_store** out, char** err);
rx_status rx_store_prefixed(rx_store* base, const char* prefix, rx_store** out, char** err);
void rx_store_destroy(rx_store* store);

/* host: the address Gloo binds (its device), or NULL for torch.distributed's default choice
   (GLOO_SOCKET_IFNAME, else the host name's address). A device for `host` connects every pair
   before this returns (no lazy initialisation). */
rx_status rx_group_gloo_create(rx_store* store, int rank, int world_size, int64_t timeout_ms,
                               const char* host, rx_group** out, char** err);
/* Only in builds with the `nccl` feature (c10d_shim_nccl.cpp). */
rx_status rx_group_nccl_create(rx_store* store, int rank, int world_size, int64_t timeout_ms,
                               rx_group** out, char** err);
void rx_group_destroy(rx_group* group);

/* tensor: an at::Tensor* (tch's C_tensor*). */
rx_status rx_group_all_reduce(rx_group* group, void* tensor, int op, char** err);
rx_status rx_group_broadcast(rx_group* group, void* tensor, int root, char** err);
rx_status rx_group_all_gather(rx_group* group, const void* input, void* const* outputs,
                              int n_outputs, char** err);
rx_status rx_group_barrier(rx_group* group, char** err);

#ifdef __cplusplus
}
#endif
