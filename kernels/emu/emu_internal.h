// State shared by the emulator's runtime files (not included by kernels):
//   emu_runtime.cpp  fibers, scheduler, barriers, the launch entry point
//   emu_warp.cpp     warp collectives (shfl, vote, mma, ldmatrix, elect) and cp.async
//   emu_wgmma.cpp    warpgroup collectives: wgmma, its fences and groups, setmaxnreg
//   emu_tma.cpp      mbarrier objects, cp.async.bulk.tensor (TMA) loads
//   emu_race.cpp     the race checker (shadow memory, vector clocks, reports)
#pragma once

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "emu_runtime.h"

#if !(defined(__x86_64__) && !defined(EMU_USE_UCONTEXT))
#include <ucontext.h>
#endif

// Dynamic shared memory: `extern __shared__ unsigned char smem[];` in a kernel names this.
extern thread_local unsigned char smem[];

namespace emu {

#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
struct Context {
    void* sp = nullptr;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

enum class FState : uint8_t { Runnable, Barrier, Warp, Warpgroup, Mbarrier, Named, Exited, Failed };

struct CpOp {
    unsigned char* dst;
    const unsigned char* src;
    unsigned size, src_size;
};

struct Fiber {
    Context ctx;
    ThreadVars vars;
    unsigned tid = 0;  // linear thread index in the block
    unsigned lane = 0, warp = 0;
    FState state = FState::Runnable;
    const char* barrier_file = "";  // the __syncthreads it waits at
    int barrier_line = 0;
    uint32_t out[4] = {};  // this lane's result of its last warp collective
    std::vector<CpOp> uncommitted;
    std::deque<std::vector<CpOp>> groups;
    uint32_t cp_groups_committed = 0;  // cp.async groups committed so far (race checker)
    uint32_t cp_groups_retired = 0;
    int mbar_wait = -1;  // index of the mbarrier this fiber blocks on, FState::Mbarrier
    uint32_t mbar_parity = 0;
    int named_wait = -1;  // the named barrier (bar.sync id) it blocks on, FState::Named
};

// One of the CTA's named barriers 1..15 (PTX ISA "bar, barrier"; 0 is __syncthreads'):
// the phase in progress. A phase completes when `expected` threads have arrived (bar.sync
// and bar.arrive both arrive; only bar.sync waits); then the barrier is ready again.
struct NamedBarrier {
    uint32_t expected = 0;  // the thread count of this phase's arrivals (0: none yet)
    uint32_t arrived = 0;
    uint32_t lanes[32] = {};  // per warp, the lanes arrived in this phase
    const char* file = "";    // the first arrival of the phase
    int line = 0;
    uint64_t phases = 0;      // completed phases
};
constexpr unsigned kNamedBarriers = 16;

enum class Coll : uint8_t { Syncwarp, Shfl, Vote, Mma, Ldmatrix, Elect };

// One warp-level rendezvous in progress: the lanes named by `mask` deposit their operands.
struct Pending {
    Coll kind;
    int sub;  // shfl mode, vote mode, mma type, or ldmatrix 2*num+trans
    unsigned mask;
    unsigned arrived;
    uint32_t in[32][10];  // mma: a[0..3], b[4..5], c[6..9]
    int arg[32];
    int width[32];
    const unsigned char* ptr[32];
};

struct Warp {
    unsigned live = 0;  // lanes that exist and have not exited
    std::vector<Pending> pending;
};

// ---- warpgroups (emu_wgmma.cpp) ----
enum class WgColl : uint8_t { None, Fence, Mma, Commit, Wait, Setmaxnreg };

// The operands of one wgmma.mma_async as the warpgroup's threads deposit them.
struct WgmmaOp {
    int type = 0;     // MMA_F16 or MMA_BF16
    int n = 0;        // N of m64nNk16
    bool a_regs = false;
    uint64_t desc_a = 0, desc_b = 0;
    int scale_d = 1, scale_a = 1, scale_b = 1, trans_a = 0, trans_b = 0;
    const char* file = nullptr;
    int line = 0;
};

// Results of wgmma operations not yet retired by wgmma.wait_group, per thread and
// accumulator array: they are written to `d` when the group of the last operation that
// accumulated into it retires; until then `d` holds NaN.
struct AccEntry {
    float* d = nullptr;
    int count = 0;
    uint64_t last_seq = 0;
    float values[128];
};

struct Warpgroup {
    // The rendezvous in progress.
    WgColl kind = WgColl::None;
    int arg = 0;
    unsigned arrived = 0;  // number of threads arrived
    uint32_t arrived_mask[4] = {};
    WgmmaOp op;
    bool op_mismatch = false;
    std::string mismatch;
    float* d[128] = {};
    uint32_t a[128][4] = {};
    // Asynchronous state.
    bool need_fence = true;    // wgmma.fence required before the next wgmma.mma_async
    uint64_t seq = 0;          // wgmma.mma_async operations issued
    uint64_t committed = 0;    // operations 1..committed are in committed groups
    uint64_t retired = 0;      // operations 1..retired are complete
    std::deque<uint64_t> groups;  // last operation of each pending committed group
    std::vector<AccEntry> acc[128];
};

// ---- mbarriers and TMA (emu_tma.cpp) ----
struct TmaChunk {
    uint32_t dst;          // shared address of the 16-byte (or smaller) destination piece
    uint32_t bytes;
    const unsigned char* src;  // null: out-of-bounds fill
    uint8_t fill;              // fill byte pattern selector: 0 zero, 1 NaN of the element type
    uint8_t elem_bytes;
};

struct TmaOp {
    std::vector<TmaChunk> chunks;
    uint32_t bytes = 0;
};

struct Mbarrier {
    unsigned char* addr = nullptr;  // host address of the 8-byte object
    uint32_t shared = 0;            // its shared address
    uint32_t expected = 0;
    uint32_t pending = 0;
    int64_t tx = 0;
    uint32_t phase = 0;  // completed phases; the current phase's parity is phase & 1
    std::vector<TmaOp> inflight;
    int race_slot = -1;  // race checker: agent slot of the TMA writes completing on it
};

struct RaceState;  // emu_race.cpp

struct Launch {
    const EmuKernel* kernel = nullptr;
    void** params = nullptr;
    EmuDim3 grid{}, block{};
    unsigned shared_bytes = 0;
    EmuOrder order = EMU_ORDER_FORWARD;
    uint64_t rng = 0;
    unsigned flags = 0;
    unsigned nthreads = 0;
    unsigned exited = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<std::unique_ptr<Warpgroup>> warpgroups;
    std::vector<Mbarrier> mbarriers;
    NamedBarrier named[kNamedBarriers];
    std::vector<Fiber*> runlist;
    Context sched;
    Fiber* current = nullptr;
    int status = EMU_OK;
    std::string error;
    RaceState* race = nullptr;
};
extern thread_local Launch* tls_launch;

// Shared addresses: the dynamic shared memory `smem` starts at this shared address (the
// 1 KiB below it is what CUDA reserves per block on sm_80 and later); the host array is
// 1024-byte aligned, so a host address and its shared address agree modulo 1024, which the
// position-dependent swizzles of TMA and wgmma rely on.
constexpr uint32_t kSharedBase = 0x400;

// ---- emu_runtime.cpp ----
Launch& launch();
void set_error(Launch& L, int status, const char* fmt, va_list ap);
void set_errorf(Launch& L, int status, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void describe_thread(const Fiber& f, char* buf, size_t n);
void yield_to_scheduler(Launch& L, Fiber* f);
// The host pointer of `bytes` bytes at shared address `addr`, or null when they are not
// inside the launch's dynamic shared memory.
unsigned char* shared_host(const Launch& L, uint32_t addr, uint32_t bytes);
uint32_t shared_of_host(const void* p);  // no check
bool in_dynamic_smem(const Launch& L, const void* p, size_t bytes);
uint64_t next_random(Launch& L);

// ---- emu_warp.cpp ----
void try_complete(Launch& L, Warp& w, size_t index);
const char* coll_name(Coll k, int sub);
bool aligned_kind(Coll k);
void perform(const std::vector<CpOp>& ops);

// ---- emu_wgmma.cpp ----
void warpgroups_reset(Launch& L);
// A thread of a warpgroup exited: an error if its warpgroup waits at a collective.
void warpgroup_thread_exit(Launch& L, Fiber& f);
const char* wg_coll_name(WgColl k);

// ---- emu_tma.cpp ----
void mbarriers_reset(Launch& L);
// Lands every TMA load still in flight; returns true if that woke a thread.
bool tma_land_all(Launch& L);
void describe_mbarrier_wait(const Launch& L, const Fiber& f, char* buf, size_t n);

}  // namespace emu
