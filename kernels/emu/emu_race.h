// The race checker's interface to the rest of the runtime (kernels/emu/emu_race.cpp; the
// design is in kernels/README.md, "Race checker"). Every function is called only while
// `L.race` is non-null, i.e. in a launch with EMU_FLAG_RACECHECK.
#pragma once

#include <stdint.h>

#include <string>

#include "emu_internal.h"

namespace emu {
namespace race {

// A source site: file:line plus the operation, interned (top bit set), or a code address in
// the instrumented kernel (symbolized with addr2line when a race is reported).
uint64_t site(const char* file, int line, const char* op);

RaceState* create(Launch& L);
void destroy(RaceState* r);
void block_begin(Launch& L);
// The report of every race found so far in the launch; empty when none.
std::string report(Launch& L);

// Synchronisation.
void barrier_release(Launch& L);                              // __syncthreads released
void named_arrive(Launch& L, Fiber& f, unsigned id);           // bar.sync/bar.arrive: release
void named_complete(Launch& L, unsigned id);                   // the phase's arrivals joined
void named_acquire(Launch& L, Fiber& f, unsigned id);          // a bar.sync waiter goes on
void warp_sync(Launch& L, unsigned warp, unsigned lanes);     // __syncwarp among `lanes`
void cp_async_retired(Launch& L, Fiber& f);                   // after a cp.async wait
void mbar_init(Launch& L, Mbarrier& m);
void mbar_arrive(Launch& L, Fiber& f, Mbarrier& m);           // release into the phase
void mbar_phase_complete(Launch& L, Mbarrier& m);             // before m.phase advances
void mbar_acquire(Launch& L, Fiber& f, Mbarrier& m, unsigned parity);
void wgmma_retired(Launch& L, unsigned warpgroup, uint64_t seq);
void proxy_fence(Launch& L, Fiber& f);

// Accesses. `bytes` at host address `p` (shared memory only: other addresses are ignored).
void thread_access(Launch& L, Fiber& f, const void* p, unsigned bytes, bool write, bool atomic,
                   uint64_t site);
void cp_async_write(Launch& L, Fiber& f, const void* dst, unsigned bytes, uint64_t site);
void tma_write(Launch& L, Fiber& f, Mbarrier& m, const void* dst, unsigned bytes,
               uint64_t site);
// A wgmma of `warpgroup` reads `bytes` at `p` (its operand from a descriptor) as operation
// `seq`; `first_tid` is the warpgroup's first thread.
void wgmma_read(Launch& L, unsigned warpgroup, uint64_t seq, const void* p, unsigned bytes,
                uint64_t site);

}  // namespace race
}  // namespace emu
