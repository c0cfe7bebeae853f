// mbarrier objects and TMA tensor loads.
//
// Sources (PTX ISA): "Parallel Synchronization and Communication Instructions: mbarrier"
// ("Contents of the mbarrier object", "Phase of the mbarrier object", "Tracking asynchronous
// operations by the mbarrier object", mbarrier.init, mbarrier.arrive, mbarrier.expect_tx,
// mbarrier.test_wait/try_wait); "Data Movement and Conversion Instructions:
// cp.async.bulk.tensor" and "Tensor copy restrictions"; "fence.proxy.async"; the CUDA C++
// Programming Guide, "Asynchronous Data Copies using the Tensor Memory Accelerator (TMA)",
// "The Swizzle Modes"; cuda.h, cuTensorMapEncodeTiled (fields of EmuTensorMap).
//
// An mbarrier has an expected arrival count, a pending arrival count, a transaction count
// (tx-count) and a phase. arrive decrements the pending count, expect_tx raises the
// tx-count, complete_tx (a TMA load landing) lowers it; when both are zero the phase
// completes: the phase number advances, the pending count is reset to the expected count.
// try_wait.parity P returns once the phase with parity P has completed, i.e. when the
// current phase's parity differs from P. The emulator blocks the thread until then (the
// ISA lets try_wait return false after a time limit; here the limit is infinite), and a
// wait no thread can ever satisfy is reported as a deadlock.
//
// A TMA load is issued into the barrier's current phase; its data lands, and its bytes
// complete, only when some thread waits on that barrier (or when no thread can run, or at
// the end of the block), so a thread that reads the destination without waiting sees the
// previous contents (poison).
#include <stdio.h>
#include <string.h>

#include "emu_internal.h"
#include "emu_race.h"

namespace emu {
namespace {

int find_mbar(const Launch& L, const void* bar) {
    for (size_t i = 0; i < L.mbarriers.size(); ++i)
        if (L.mbarriers[i].addr == bar) return static_cast<int>(i);
    return -1;
}

Mbarrier& get_mbar(Launch& L, void* bar, const char* what) {
    const int i = find_mbar(L, bar);
    if (i < 0)
        fail(EMU_ERR_TRAP, "%s: the mbarrier at %p was not initialized with mbarrier.init in "
             "this block", what, bar);
    return L.mbarriers[static_cast<size_t>(i)];
}

void wake(Launch& L, int index) {
    const Mbarrier& m = L.mbarriers[static_cast<size_t>(index)];
    for (Fiber& f : L.fibers)
        if (f.state == FState::Mbarrier && f.mbar_wait == index && (m.phase & 1u) != f.mbar_parity)
            f.state = FState::Runnable;
}

// Completes the current phase if its arrivals and transactions are all done.
bool maybe_complete(Launch& L, int index) {
    Mbarrier& m = L.mbarriers[static_cast<size_t>(index)];
    if (m.pending != 0 || m.tx != 0) return false;
    if (L.race) race::mbar_phase_complete(L, m);
    m.phase += 1;
    m.pending = m.expected;
    wake(L, index);
    return true;
}

// Performs the TMA loads in flight on barrier `index` and their complete_tx.
bool land(Launch& L, int index) {
    std::vector<TmaOp> ops;
    ops.swap(L.mbarriers[static_cast<size_t>(index)].inflight);
    if (ops.empty()) return false;
    for (const TmaOp& op : ops) {
        for (const TmaChunk& c : op.chunks) {
            unsigned char* dst = shared_host(L, c.dst, c.bytes);
            if (c.src) memcpy(dst, c.src, c.bytes);
            else memset(dst, c.fill ? 0xff : 0, c.bytes);
        }
        L.mbarriers[static_cast<size_t>(index)].tx -= op.bytes;
    }
    maybe_complete(L, index);
    return true;
}

const char* swizzle_name(unsigned s) {
    static const char* n[] = {"NONE", "32B", "64B", "128B"};
    return s < 4 ? n[s] : "?";
}

unsigned elem_bytes(unsigned dtype) {
    // CUtensorMapDataType: UINT8, UINT16, UINT32, INT32, UINT64, INT64, FLOAT16, FLOAT32,
    // FLOAT64, BFLOAT16, FLOAT32_FTZ, TFLOAT32, TFLOAT32_FTZ.
    static const unsigned size[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
    return dtype < 13 ? size[dtype] : 0;
}

}  // namespace

void mbarriers_reset(Launch& L) { L.mbarriers.clear(); }

bool tma_land_all(Launch& L) {
    bool any = false;
    for (size_t i = 0; i < L.mbarriers.size(); ++i) any |= land(L, static_cast<int>(i));
    if (!any) return false;
    for (const Fiber& f : L.fibers)
        if (f.state == FState::Runnable) return true;
    return false;
}

void describe_mbarrier_wait(const Launch& L, const Fiber& f, char* buf, size_t n) {
    char who[96];
    describe_thread(f, who, sizeof who);
    const Mbarrier& m = L.mbarriers[static_cast<size_t>(f.mbar_wait)];
    char where[48];
    if (in_dynamic_smem(L, m.addr, 8)) snprintf(where, sizeof where, "shared address 0x%x", shared_of_host(m.addr));
    else snprintf(where, sizeof where, "%p", static_cast<const void*>(m.addr));
    snprintf(buf, n, "%s waits on the mbarrier at %s for the phase of parity %u, which never "
             "completes (phase %u: %u of %u arrivals pending, tx-count %lld)", who, where,
             f.mbar_parity, m.phase, m.pending, m.expected, static_cast<long long>(m.tx));
}

// ---------------------------------------------------------------------------------------
// Entry points called from emulated kernels (through cuda/common/ptx.cuh).
// ---------------------------------------------------------------------------------------

// mbarrier.init.shared.b64 [bar], count: count in [1, 2^20 - 1]; phase 0, pending count =
// expected count = count, tx-count 0. The object is 8 bytes, 8-byte aligned.
void mbarrier_init(void* bar, unsigned count) {
    Launch& L = launch();
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0)
        fail(EMU_ERR_ADDRESS, "mbarrier.init: %p is not 8-byte aligned", bar);
    if (count < 1 || count > (1u << 20) - 1)
        fail(EMU_ERR_TRAP, "mbarrier.init: count %u is not in [1, 2^20 - 1]", count);
    int i = find_mbar(L, bar);
    if (i < 0) {
        L.mbarriers.emplace_back();
        i = static_cast<int>(L.mbarriers.size() - 1);
    }
    Mbarrier& m = L.mbarriers[static_cast<size_t>(i)];
    m.addr = static_cast<unsigned char*>(bar);
    m.expected = m.pending = count;
    m.tx = 0;
    m.phase = 0;
    m.inflight.clear();
    const uint64_t marker = static_cast<uint64_t>(count);
    memcpy(bar, &marker, 8);  // the object's bits are opaque; not read back
    if (L.race) race::mbar_init(L, m);
}

// mbarrier.expect_tx: raises the tx-count of the current phase (range +-(2^20 - 1)).
void mbarrier_expect_tx(void* bar, unsigned tx_bytes) {
    Launch& L = launch();
    Mbarrier& m = get_mbar(L, bar, "mbarrier.expect_tx");
    m.tx += tx_bytes;
    if (m.tx > (1 << 20) - 1)
        fail(EMU_ERR_TRAP, "mbarrier.expect_tx: tx-count %lld exceeds 2^20 - 1",
             static_cast<long long>(m.tx));
}

// mbarrier.arrive[.expect_tx]: expect-tx first (when asked), then one arrival; returns the
// state (here the phase number it arrived in).
uint64_t mbarrier_arrive(void* bar, unsigned tx_bytes, bool expect_tx) {
    Launch& L = launch();
    if (expect_tx) mbarrier_expect_tx(bar, tx_bytes);
    Mbarrier& m = get_mbar(L, bar, "mbarrier.arrive");
    const uint64_t state = m.phase;
    if (L.race) race::mbar_arrive(L, *L.current, m);
    m.pending -= 1;
    maybe_complete(L, find_mbar(L, bar));
    return state;
}

bool mbarrier_try_wait_parity(void* bar, unsigned parity) {
    Launch& L = launch();
    Fiber* f = L.current;
    const int i = find_mbar(L, bar);
    if (i < 0) get_mbar(L, bar, "mbarrier.try_wait.parity");
    parity &= 1u;
    if ((L.mbarriers[static_cast<size_t>(i)].phase & 1u) == parity) {
        land(L, i);  // the loads this phase waits for arrive now
        if ((L.mbarriers[static_cast<size_t>(i)].phase & 1u) == parity) {
            f->state = FState::Mbarrier;
            f->mbar_wait = i;
            f->mbar_parity = parity;
            yield_to_scheduler(L, f);  // runnable again once the phase has completed
            f->mbar_wait = -1;
        }
    }
    if (L.race) race::mbar_acquire(L, *f, L.mbarriers[static_cast<size_t>(i)], parity);
    return true;
}

// cp.async.bulk.tensor.Nd.shared::cluster.global.mbarrier::complete_tx::bytes
//   [dst], [tensor_map, {c0, .., cN-1}], [bar]
// Box element (e0, .., eN-1) comes from global coordinate c0 + e0, ci + ei * elementStrides[i]
// (i >= 1; the stride of dimension 0 is ignored), and lands at the dense box offset of
// (e0, ..), swizzled on the shared address like wgmma's operands (16-byte chunk index XOR
// the 128-byte row index modulo the span). Elements outside [0, globalDim) are filled with
// zeros, or NaN (all ones) with OOB_FILL_NAN_REQUEST_ZERO_FMA. The barrier's tx-count falls
// by the whole box's bytes when the load lands.
void tma_load(void* dst, const void* tensor_map, int rank, const int32_t* coords, void* bar,
              EMU_SITE_PARAMS) {
    Launch& L = launch();
    Fiber* f = L.current;
    EmuTensorMap map;
    memcpy(&map, tensor_map, sizeof map);
    const char* what = "cp.async.bulk.tensor";
    if (map.magic != EMU_TENSOR_MAP_MAGIC)
        fail(EMU_ERR_TRAP, "%s at %s:%d: the tensor map at %p was not encoded by "
             "streamdit_kernels::tma (no EmuTensorMap magic)", what, site_file, site_line,
             tensor_map);
    if (map.rank != rank)
        fail(EMU_ERR_TRAP, "%s.%dd at %s:%d: the tensor map has rank %u", what, rank, site_file,
             site_line, map.rank);
    if (map.interleave != 0)
        fail(EMU_ERR_TRAP, "%s at %s:%d: interleaved tensor maps are not emulated", what,
             site_file, site_line);
    const unsigned es = elem_bytes(map.data_type);
    if (es == 0) fail(EMU_ERR_TRAP, "%s: data type %u is not emulated", what, map.data_type);
    if (!in_dynamic_smem(L, dst, 1) || reinterpret_cast<uintptr_t>(dst) % 128 != 0)
        fail(EMU_ERR_ADDRESS, "%s at %s:%d: destination %p is not a 128-byte aligned address in "
             "dynamic shared memory", what, site_file, site_line, dst);
    Mbarrier& m = get_mbar(L, bar, what);
    const unsigned span = map.swizzle == 0 ? 0 : 16u << map.swizzle;  // 32, 64, 128
    uint32_t n[5] = {1, 1, 1, 1, 1};
    for (int i = 0; i < rank; ++i)
        n[i] = i == 0 ? map.box_dim[0]
                      : (map.box_dim[i] + map.element_strides[i] - 1u) / map.element_strides[i];
    const uint32_t row_bytes = n[0] * es;
    if (span && row_bytes != span)
        fail(EMU_ERR_TRAP, "%s at %s:%d: SWIZZLE_%s with an inner box of %u bytes: the layout "
             "of an inner box narrower than the swizzle span is not modelled", what, site_file,
             site_line, swizzle_name(map.swizzle), row_bytes);
    TmaOp op;
    op.bytes = row_bytes * n[1] * n[2] * n[3] * n[4];
    const uint32_t base = shared_of_host(dst);
    const uint32_t w = span ? span / 16 : 1;
    const unsigned char* g = reinterpret_cast<const unsigned char*>(map.global_address);
    const uint64_t site = L.race ? race::site(site_file, site_line, "cp.async.bulk.tensor") : 0;
    uint32_t e[5] = {0, 0, 0, 0, 0};
    uint32_t row = 0;
    for (e[4] = 0; e[4] < n[4]; ++e[4])
        for (e[3] = 0; e[3] < n[3]; ++e[3])
            for (e[2] = 0; e[2] < n[2]; ++e[2])
                for (e[1] = 0; e[1] < n[1]; ++e[1], ++row) {
                    // Outer coordinates of this box row and whether they are in bounds.
                    bool outer_ok = true;
                    uint64_t outer_off = 0;
                    for (int i = 1; i < rank; ++i) {
                        const int64_t c = static_cast<int64_t>(coords[i]) +
                                          static_cast<int64_t>(e[i]) * map.element_strides[i];
                        if (c < 0 || c >= static_cast<int64_t>(map.global_dim[i])) outer_ok = false;
                        else outer_off += static_cast<uint64_t>(c) * map.global_strides[i - 1];
                    }
                    for (uint32_t e0 = 0; e0 < n[0]; ++e0) {
                        const uint32_t lin = base + row * row_bytes + e0 * es;
                        const uint32_t addr = lin ^ (((lin >> 7) & (w - 1)) << 4);
                        const int64_t c0 = static_cast<int64_t>(coords[0]) + e0;
                        const bool ok = outer_ok && c0 >= 0 &&
                                        c0 < static_cast<int64_t>(map.global_dim[0]);
                        if (shared_host(L, addr, es) == nullptr)
                            fail(EMU_ERR_ADDRESS, "%s at %s:%d: box byte at shared address 0x%x "
                                 "is outside the %u bytes of dynamic shared memory", what,
                                 site_file, site_line, addr, L.shared_bytes);
                        TmaChunk c;
                        c.dst = addr;
                        c.bytes = es;
                        c.src = ok ? g + outer_off + static_cast<uint64_t>(c0) * es : nullptr;
                        c.fill = map.oob_fill ? 1 : 0;
                        c.elem_bytes = static_cast<uint8_t>(es);
                        // Merge with the previous piece when contiguous on both sides.
                        TmaChunk* prev = op.chunks.empty() ? nullptr : &op.chunks.back();
                        if (prev && prev->dst + prev->bytes == c.dst && prev->bytes < 16 &&
                            ((prev->src && c.src && prev->src + prev->bytes == c.src) ||
                             (!prev->src && !c.src))) {
                            prev->bytes += es;
                        } else {
                            op.chunks.push_back(c);
                        }
                    }
                }
    if (L.race)
        for (const TmaChunk& c : op.chunks) race::tma_write(L, *f, m, shared_host(L, c.dst, c.bytes), c.bytes, site);
    m.inflight.push_back(std::move(op));
}

void fence_proxy_async() {
    Launch& L = launch();
    if (L.race) race::proxy_fence(L, *L.current);
}

}  // namespace emu
