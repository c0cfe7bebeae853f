// The emulator's two interfaces:
//  - the C ABI the Rust side calls (emu_launch, the kernel registry, two test hooks), and
//  - the C++ entry points that cuda_emu.h and cuda/common/ptx.cuh call from inside an
//    emulated kernel (barriers, warp and warpgroup collectives, mma, wgmma, ldmatrix,
//    cp.async, mbarrier, TMA, the race checker's hooks).
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
// `entry_racecheck` is the same kernel compiled a second time with every memory access
// instrumented (the race checker's copy, build.rs); launches with EMU_FLAG_RACECHECK run it.
typedef struct EmuKernel {
    const char* name;
    void (*entry)(void** params);
    void (*entry_racecheck)(void** params);
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
    EMU_ERR_RACE = 6,            // the race checker found unordered shared-memory accesses
    EMU_ERR_DEADLOCK = 7,        // an mbarrier or warpgroup wait that can never complete
};

// emu_launch flags.
#define EMU_FLAG_RACECHECK 1u

// Largest dynamic shared memory per block accepted (sm_90 opt-in maximum, 227 KiB).
#define EMU_MAX_SHARED_BYTES (227u * 1024u)
#define EMU_MAX_BLOCK_THREADS 1024u

// Runs `kernel` on the calling OS thread; blocks run one after another, the threads of a
// block as fibers. Returns EMU_OK or an error status with a message in `err` (always
// NUL-terminated when err_len > 0). Never aborts the process for a detected error.
// With EMU_FLAG_RACECHECK the instrumented copy runs and unordered shared-memory accesses
// fail the launch with EMU_ERR_RACE, naming both accesses.
int emu_launch(const EmuKernel* kernel, EmuDim3 grid, EmuDim3 block, unsigned shared_bytes,
               void** params, EmuOrder order, uint64_t seed, unsigned flags, char* err,
               size_t err_len);

// Registry of the kernels compiled into this library (EMU_REGISTER_KERNEL).
size_t emu_kernel_count(void);
const EmuKernel* emu_kernel_at(size_t index);
// Test-only variants (a `// streamdit-emu-variant: NAME` line in a .cu file): the kernels of
// that file compiled, instrumented, with EMU_VARIANT_<NAME> defined, named "kernel/NAME".
size_t emu_variant_count(void);
const EmuKernel* emu_variant_at(size_t index);

// A tensor map as the emulator encodes it (kernels/src/tma.rs fills it after checking the
// cuTensorMapEncodeTiled rules): the fields of cuTensorMapEncodeTiled, in the 128 bytes,
// 64-byte aligned, of the driver's opaque CUtensorMap.
#define EMU_TENSOR_MAP_MAGIC 0x50414d54u /* "TMAP" */
typedef struct EmuTensorMap {
    uint32_t magic;
    uint8_t data_type;  // CUtensorMapDataType
    uint8_t rank;       // 1..5
    uint8_t interleave;  // CUtensorMapInterleave (only NONE is emulated)
    uint8_t swizzle;     // CUtensorMapSwizzle: 0 none, 1 32B, 2 64B, 3 128B
    uint8_t l2_promotion;
    uint8_t oob_fill;  // CUtensorMapFloatOOBfill: 0 zeros, 1 NaN
    uint16_t box_dim[5];
    uint8_t element_strides[5];
    uint8_t reserved0[7];
    uint64_t global_address;
    uint64_t global_dim[5];
    uint64_t global_strides[4];  // bytes, dimensions 1..rank-1
    uint8_t reserved1[16];
} __attribute__((aligned(64))) EmuTensorMap;

// Test hook: the shared-memory address a wgmma reads element (mn, k) of an operand from,
// given its 64-bit matrix descriptor (major 0: K-major, 1: MN-major; 2-byte elements).
// Returns EMU_OK, or EMU_ERR_ADDRESS with the reason in err (e.g. a non-zero base offset).
int emu_wgmma_operand_address(uint64_t desc, int mn, int k, int major, uint32_t* addr,
                              char* err, size_t err_len);

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

// A call site in kernel source, for error and race reports (ptx.cuh passes
// __builtin_FILE()/__builtin_LINE() of its caller).
#define EMU_SITE_PARAMS const char* site_file, int site_line

void syncthreads(const char* file, int line);
// bar.sync id, count (wait = true) and bar.arrive id, count: named barrier `id` in 1..15,
// `count` threads (a positive multiple of 32) per phase.
void named_barrier(unsigned id, unsigned count, bool wait, const char* file, int line);
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
void ldmatrix_m8n8_b16(uint32_t* regs, int num, bool trans, const void* row_addr,
                       EMU_SITE_PARAMS);
// elect.sync: returns the elected lane; *leader is true in that lane only.
uint32_t elect_sync(unsigned mask, bool* leader);

void cp_async(void* dst_shared, const void* src_global, unsigned cp_size, unsigned src_size,
              EMU_SITE_PARAMS);
void cp_async_commit();
void cp_async_wait(int n);

// Shared-state-space address of a generic pointer into dynamic shared memory (cvta).
uint32_t shared_address(const void* p);

// wgmma (emu_wgmma.cpp). `d` holds n/2 f32 accumulators; `a_regs` is null when A comes from
// the descriptor desc_a, else the thread's four .f16x2/.bf16x2 A registers.
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int n);
void wgmma_mma(MmaType type, int n, float* d, uint64_t desc_a, const uint32_t* a_regs,
               uint64_t desc_b, int scale_d, int scale_a, int scale_b, int trans_a, int trans_b,
               EMU_SITE_PARAMS);
void setmaxnreg(bool increase, int count);

// mbarrier and TMA (emu_tma.cpp). `bar` is the generic address of the 8-byte object.
void mbarrier_init(void* bar, unsigned count);
uint64_t mbarrier_arrive(void* bar, unsigned tx_bytes, bool expect_tx);
void mbarrier_expect_tx(void* bar, unsigned tx_bytes);
bool mbarrier_try_wait_parity(void* bar, unsigned parity);
void tma_load(void* dst, const void* tensor_map, int rank, const int32_t* coords, void* bar,
              EMU_SITE_PARAMS);
void fence_proxy_async();

// Race checker hooks (emu_race.cpp): an atomic read-modify-write of `bytes` at `p`.
void race_atomic(const void* p, unsigned bytes);

}  // namespace emu
#endif
