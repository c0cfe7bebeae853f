// The emulator's two interfaces:
//  - the C ABI the Rust side calls (emu_launch and the kernel registry), and
//  - the C++ entry points that cuda_emu.h and cuda/common/ptx.cuh call from inside an
//    emulated kernel (barriers, warp collectives, mma, ldmatrix, cp.async).
// See kernels/README.md for the execution model.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct EmuDim3 {
    unsigned x, y, z;
} EmuDim3;

// A kernel as the emulator sees it: `entry` unpacks cuLaunchKernel-style `void** params`.
// By the project's convention a kernel takes one parameter struct by value, so params[0]
// points at it and `params_size`/`params_align` describe it (the Rust side checks them).
typedef struct EmuKernel {
    const char* name;
    void (*entry)(void** params);
    size_t params_size;
    size_t params_align;
} EmuKernel;

// Order in which the scheduler resumes runnable threads in every pass (and runs blocks).
typedef enum EmuOrder {
    EMU_ORDER_FORWARD = 0,
    EMU_ORDER_REVERSE = 1,
    EMU_ORDER_SHUFFLE = 2,  // a fresh seeded permutation for every pass
} EmuOrder;

// Status codes returned by emu_launch.
enum {
    EMU_OK = 0,
    EMU_ERR_INVALID_LAUNCH = 1,  // grid/block/shared-memory configuration
    EMU_ERR_BARRIER = 2,         // __syncthreads deadlock, divergence, exit while others wait
    EMU_ERR_WARP = 3,            // warp collective misuse or deadlock
    EMU_ERR_ADDRESS = 4,         // misaligned or malformed ldmatrix/cp.async operand
    EMU_ERR_TRAP = 5,            // __trap() or another error raised by the kernel
};

// Largest dynamic shared memory per block accepted (sm_90 opt-in maximum, 227 KiB).
#define EMU_MAX_SHARED_BYTES (227u * 1024u)
#define EMU_MAX_BLOCK_THREADS 1024u

// Runs `kernel` on the calling OS thread; blocks run one after another, the threads of a
// block as fibers. Returns EMU_OK or an error status with a message in `err` (always
// NUL-terminated when err_len > 0). Never aborts the process for a detected error.
int emu_launch(const EmuKernel* kernel, EmuDim3 grid, EmuDim3 block, unsigned shared_bytes,
               void** params, EmuOrder order, uint64_t seed, char* err, size_t err_len);

// Registry of the kernels compiled into this library (EMU_REGISTER_KERNEL).
size_t emu_kernel_count(void);
const EmuKernel* emu_kernel_at(size_t index);

#ifdef __cplusplus
}  // extern "C"

namespace emu {

// Per-thread (per-fiber) built-in variables.
struct ThreadVars {
    EmuDim3 thread_idx, block_idx, block_dim, grid_dim;
};
// The fiber running now on this OS thread (null outside a launch).
extern thread_local const ThreadVars* tls_vars;

[[noreturn]] void fail(int status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

void syncthreads();
void syncwarp(unsigned mask);
unsigned activemask();

// shfl.sync: mode 0 = idx, 1 = up, 2 = down, 3 = bfly; c packs width as in PTX.
enum ShflMode { SHFL_IDX = 0, SHFL_UP = 1, SHFL_DOWN = 2, SHFL_BFLY = 3 };
uint32_t shfl(ShflMode mode, unsigned mask, uint32_t value, int b, int width);
// vote.sync: 0 = ballot, 1 = any, 2 = all
enum VoteMode { VOTE_BALLOT = 0, VOTE_ANY = 1, VOTE_ALL = 2 };
unsigned vote(VoteMode mode, unsigned mask, int pred);

enum MmaType { MMA_F16 = 0, MMA_BF16 = 1 };
void mma_m16n8k16(MmaType type, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4]);
void ldmatrix_m8n8_b16(uint32_t* regs, int num, bool trans, const void* row_addr);

void cp_async(void* dst_shared, const void* src_global, unsigned cp_size, unsigned src_size);
void cp_async_commit();
void cp_async_wait(int n);

}  // namespace emu
#endif
