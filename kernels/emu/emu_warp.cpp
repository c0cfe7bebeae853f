// Warp-level collectives (shfl, vote, __syncwarp, mma.sync, ldmatrix, elect.sync) as
// rendezvous of the lanes they name, and cp.async as per-thread queues of copies performed
// when cp.async.wait_group retires their group. See kernels/README.md, "The emulator".
#include <stdio.h>
#include <string.h>

#include <vector>

#include "emu_fp16.h"
#include "emu_internal.h"
#include "emu_race.h"

namespace emu {

const char* coll_name(Coll k, int sub) {
    switch (k) {
        case Coll::Syncwarp: return "__syncwarp";
        case Coll::Shfl: {
            static const char* n[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                      "__shfl_xor_sync"};
            return n[sub & 3];
        }
        case Coll::Vote: {
            static const char* n[] = {"__ballot_sync", "__any_sync", "__all_sync"};
            return n[sub % 3];
        }
        case Coll::Mma: return sub == MMA_F16 ? "mma.m16n8k16.f16" : "mma.m16n8k16.bf16";
        case Coll::Elect: return "elect.sync";
        case Coll::Ldmatrix: {
            static const char* n[] = {"",      "",      "ldmatrix.x1", "ldmatrix.x1.trans",
                                      "ldmatrix.x2", "ldmatrix.x2.trans", "",
                                      "",      "ldmatrix.x4", "ldmatrix.x4.trans"};
            return n[sub];
        }
    }
    return "?";
}

// .sync.aligned instructions need all 32 lanes of the warp.
bool aligned_kind(Coll k) { return k == Coll::Mma || k == Coll::Ldmatrix; }

namespace {

// ---------------------------------------------------------------------------------------
// Warp collectives: the computations, run once all lanes have arrived.
// ---------------------------------------------------------------------------------------

// PTX ISA, "Parallel Synchronization and Communication Instructions: shfl.sync": with
// c = ((32 - width) << 8) | clamp, segmask = c[12:8], clamp = 0 for .up and 31 otherwise.
void complete_shfl(Launch& L, Warp& w, Pending& p) {
    const unsigned base = static_cast<unsigned>(&w - L.warps.data()) * 32;
    for (int lane = 0; lane < 32; ++lane) {
        if (!(p.arrived >> lane & 1u)) continue;
        const int segmask = (32 - p.width[lane]) & 0x1f;
        const int cval = p.sub == SHFL_UP ? 0 : 0x1f;
        const int max_lane = (lane & segmask) | (cval & ~segmask);
        const int min_lane = lane & segmask;
        const int b = p.arg[lane] & 0x1f;
        int j = lane;
        bool pval = false;
        switch (p.sub) {
            case SHFL_UP: j = lane - b; pval = j >= max_lane; break;
            case SHFL_DOWN: j = lane + b; pval = j <= max_lane; break;
            case SHFL_BFLY: j = lane ^ b; pval = j <= max_lane; break;
            default: j = min_lane | (b & ~segmask); pval = j <= max_lane; break;
        }
        if (!pval) j = lane;
        // Reading a lane that does not take part gives an undefined value: all ones (NaN).
        const uint32_t v = (p.arrived >> j & 1u) ? p.in[j][0] : 0xffffffffu;
        L.fibers[base + lane].out[0] = v;
    }
}

// PTX ISA, "vote.sync": ballot/any/all over the lanes taking part.
void complete_vote(Launch& L, Warp& w, Pending& p) {
    const unsigned base = static_cast<unsigned>(&w - L.warps.data()) * 32;
    unsigned ballot = 0;
    for (int lane = 0; lane < 32; ++lane)
        if ((p.arrived >> lane & 1u) && p.in[lane][0]) ballot |= 1u << lane;
    uint32_t r = ballot;
    if (p.sub == VOTE_ANY) r = ballot != 0;
    if (p.sub == VOTE_ALL) r = ballot == p.arrived;
    for (int lane = 0; lane < 32; ++lane)
        if (p.arrived >> lane & 1u) L.fibers[base + lane].out[0] = r;
}

float elem16(uint32_t reg, int half, int type) {
    const uint16_t b = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
    return type == MMA_F16 ? f16_bits_to_f32(b) : bf16_bits_to_f32(b);
}

// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type". With
// g = groupID = lane >> 2 and t = threadID_in_group = lane % 4, element i of a lane's
// fragment (i = 2 * register + half for A and B, i = register for C and D) is
//   A (16x16, .row): row = g + 8 * ((i >> 1) & 1),  col = 2t + (i & 1) + 8 * (i >= 4)
//   B (16x8, .col):  row = 2t + (i & 1) + 8 * (i >= 2), col = g
//   C, D (16x8 f32): row = g + 8 * (i >= 2),          col = 2t + (i & 1)
// Each product of two f16 or bf16 values is exact (computed in f64: bf16 has f32's
// exponent range); the products are added onto C in k order, in f32, rounding to nearest
// after each addition. The tensor core sums differently inside; results may differ from
// the GPU in the last bits of f32.
void complete_mma(Launch& L, Warp& w, Pending& p) {
    const unsigned base = static_cast<unsigned>(&w - L.warps.data()) * 32;
    double A[16][16], B[16][8];
    float C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 8; ++i)
            A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >= 4)] =
                elem16(p.in[lane][i >> 1], i & 1, p.sub);
        for (int i = 0; i < 4; ++i)
            B[2 * t + (i & 1) + 8 * (i >= 2)][g] = elem16(p.in[lane][4 + (i >> 1)], i & 1, p.sub);
        for (int i = 0; i < 4; ++i) C[g + 8 * (i >= 2)][2 * t + (i & 1)] = bits_f32(p.in[lane][6 + i]);
    }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane >> 2, t = lane & 3;
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i >= 2), col = 2 * t + (i & 1);
            float acc = C[row][col];
            for (int k = 0; k < 16; ++k)
                acc = static_cast<float>(static_cast<double>(acc) + A[row][k] * B[k][col]);
            L.fibers[base + lane].out[i] = f32_bits(acc);
        }
    }
}

// PTX ISA, "Warp-level matrix load instruction: ldmatrix" (.m8n8, .b16). Lane 8j + r gives
// the address of row r of matrix j (lanes 0-7 for .x1, 0-15 for .x2, all for .x4). Lane l
// receives in register j the elements (row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1) of
// matrix j, low half first; with .trans the matrix is read transposed: elements
// (rows 2 (l % 4) and 2 (l % 4) + 1, column l / 4).
void complete_ldmatrix(Launch& L, Warp& w, Pending& p) {
    const unsigned base = static_cast<unsigned>(&w - L.warps.data()) * 32;
    const int num = p.sub >> 1;
    const bool trans = p.sub & 1;
    for (int m = 0; m < num * 8; ++m) {
        if (reinterpret_cast<uintptr_t>(p.ptr[m]) % 16 != 0) {
            set_errorf(L, EMU_ERR_ADDRESS,
                       "%s: lane %d (warp %u) gives row address %p, not 16-byte aligned",
                       coll_name(Coll::Ldmatrix, p.sub), m,
                       static_cast<unsigned>(&w - L.warps.data()), p.ptr[m]);
            return;
        }
    }
    auto at = [&](int j, int row, int col) {
        uint16_t v;
        memcpy(&v, p.ptr[8 * j + row] + 2 * col, 2);
        return static_cast<uint32_t>(v);
    };
    for (int lane = 0; lane < 32; ++lane) {
        const int r = lane >> 2, c = 2 * (lane & 3);
        for (int j = 0; j < num; ++j) {
            const uint32_t lo = trans ? at(j, c, r) : at(j, r, c);
            const uint32_t hi = trans ? at(j, c + 1, r) : at(j, r, c + 1);
            L.fibers[base + lane].out[j] = lo | (hi << 16);
        }
    }
}

// PTX ISA, "Parallel Synchronization and Communication Instructions: elect.sync": one
// leader among the member lanes (which one the ISA leaves open): the lowest lane in forward
// order, the highest in reverse order, a random member in shuffled order, so a kernel that
// assumes a particular lane fails in some order.
void complete_elect(Launch& L, Warp& w, Pending& p) {
    const unsigned base = static_cast<unsigned>(&w - L.warps.data()) * 32;
    int members[32], n = 0;
    for (int lane = 0; lane < 32; ++lane)
        if (p.arrived >> lane & 1u) members[n++] = lane;
    int leader = members[0];
    if (L.order == EMU_ORDER_REVERSE) leader = members[n - 1];
    if (L.order == EMU_ORDER_SHUFFLE) leader = members[next_random(L) % static_cast<uint64_t>(n)];
    for (int i = 0; i < n; ++i) L.fibers[base + members[i]].out[0] = static_cast<uint32_t>(leader);
}

}  // namespace

// Completes `p` if every lane it waits for has arrived; releases its lanes.
void try_complete(Launch& L, Warp& w, size_t index) {
    Pending& p = w.pending[index];
    const unsigned required = p.mask & w.live;
    if ((p.arrived & required) != required) return;
    switch (p.kind) {
        case Coll::Syncwarp: break;
        case Coll::Shfl: complete_shfl(L, w, p); break;
        case Coll::Vote: complete_vote(L, w, p); break;
        case Coll::Mma: complete_mma(L, w, p); break;
        case Coll::Ldmatrix: complete_ldmatrix(L, w, p); break;
        case Coll::Elect: complete_elect(L, w, p); break;
    }
    if (p.kind == Coll::Syncwarp && L.race) race::warp_sync(L, static_cast<unsigned>(&w - L.warps.data()), p.arrived);
    const unsigned base = static_cast<unsigned>(&w - L.warps.data()) * 32;
    for (int lane = 0; lane < 32; ++lane)
        if (p.arrived >> lane & 1u) L.fibers[base + lane].state = FState::Runnable;
    w.pending.erase(w.pending.begin() + static_cast<std::ptrdiff_t>(index));
}

namespace {

// A lane arrives at a warp collective with its operands; returns once the collective has
// completed, with the lane's results in f->out.
void arrive(Coll kind, int sub, unsigned mask, const uint32_t* in, int nin, int arg,
            int width, const void* ptr) {
    Launch& L = launch();
    Fiber* f = L.current;
    Warp& w = L.warps[f->warp];
    const unsigned bit = 1u << f->lane;
    char who[96] = "";
    const auto name_thread = [&]() {
        describe_thread(*f, who, sizeof who);
        return who;
    };
    if (aligned_kind(kind)) {
        if (w.live != 0xffffffffu)
            fail(EMU_ERR_WARP, "%s: %s: .sync.aligned needs all 32 lanes of the warp "
                 "(live lanes 0x%08x)", coll_name(kind, sub), name_thread(), w.live);
        mask = 0xffffffffu;
    }
    if (!(mask & bit))
        fail(EMU_ERR_WARP, "%s: %s is not in its own member mask 0x%08x", coll_name(kind, sub),
             name_thread(), mask);
    size_t index = w.pending.size();
    for (size_t i = 0; i < w.pending.size(); ++i) {
        const Pending& p = w.pending[i];
        if (p.mask == mask) {
            if (p.kind != kind || p.sub != sub)
                fail(EMU_ERR_WARP, "divergent warp collectives: %s is at %s while lanes 0x%08x "
                     "of its warp are at %s with the same mask", name_thread(), coll_name(kind, sub),
                     p.arrived, coll_name(p.kind, p.sub));
            index = i;
        } else if (p.mask & mask) {
            fail(EMU_ERR_WARP, "%s: %s uses mask 0x%08x while lanes 0x%08x of its warp wait "
                 "at %s with the overlapping mask 0x%08x", coll_name(kind, sub), name_thread(), mask,
                 p.arrived, coll_name(p.kind, p.sub), p.mask);
        }
    }
    if (index == w.pending.size()) {
        w.pending.emplace_back();
        Pending& p = w.pending.back();
        p.kind = kind;
        p.sub = sub;
        p.mask = mask;
        p.arrived = 0;
    }
    Pending& p = w.pending[index];
    for (int i = 0; i < nin; ++i) p.in[f->lane][i] = in[i];
    p.arg[f->lane] = arg;
    p.width[f->lane] = width;
    p.ptr[f->lane] = static_cast<const unsigned char*>(ptr);
    p.arrived |= bit;
    f->state = FState::Warp;
    try_complete(L, w, index);
    if (L.status != EMU_OK) fail(L.status, "%s", L.error.c_str());
    yield_to_scheduler(L, f);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// cp.async: copies are queued per thread and performed when a wait retires their group,
// so reading the destination before the wait sees the old contents.
// ---------------------------------------------------------------------------------------
void perform(const std::vector<CpOp>& ops) {
    for (const CpOp& op : ops) {
        if (op.src_size) memcpy(op.dst, op.src, op.src_size);
        if (op.src_size < op.size) memset(op.dst + op.src_size, 0, op.size - op.src_size);
    }
}

// ---------------------------------------------------------------------------------------
// Entry points called from emulated kernels.
// ---------------------------------------------------------------------------------------
void syncwarp(unsigned mask) { arrive(Coll::Syncwarp, 0, mask, nullptr, 0, 0, 32, nullptr); }

uint32_t shfl(ShflMode mode, unsigned mask, uint32_t value, int b, int width) {
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail(EMU_ERR_WARP, "shuffle width %d is not a power of two in [1, 32]", width);
    arrive(Coll::Shfl, mode, mask, &value, 1, b, width, nullptr);
    return launch().current->out[0];
}

unsigned vote(VoteMode mode, unsigned mask, int pred) {
    const uint32_t p = pred != 0;
    arrive(Coll::Vote, mode, mask, &p, 1, 0, 32, nullptr);
    return launch().current->out[0];
}

void mma_m16n8k16(MmaType type, float d[4], const uint32_t a[4], const uint32_t b[2],
                  const float c[4]) {
    uint32_t in[10] = {a[0], a[1], a[2], a[3], b[0], b[1],
                       f32_bits(c[0]), f32_bits(c[1]), f32_bits(c[2]), f32_bits(c[3])};
    arrive(Coll::Mma, type, 0xffffffffu, in, 10, 0, 32, nullptr);
    const Fiber* f = launch().current;
    for (int i = 0; i < 4; ++i) d[i] = bits_f32(f->out[i]);
}

void ldmatrix_m8n8_b16(uint32_t* regs, int num, bool trans, const void* row_addr,
                       EMU_SITE_PARAMS) {
    Launch& L = launch();
    // Lanes 0..8*num-1 give row addresses; each row is read as this lane's access.
    if (L.race && L.current->lane < static_cast<unsigned>(8 * num))
        race::thread_access(L, *L.current, row_addr, 16, false, false,
                            race::site(site_file, site_line, trans ? "ldmatrix.trans" : "ldmatrix"));
    arrive(Coll::Ldmatrix, 2 * num + (trans ? 1 : 0), 0xffffffffu, nullptr, 0, 0, 32, row_addr);
    const Fiber* f = launch().current;
    for (int j = 0; j < num; ++j) regs[j] = f->out[j];
}

// PTX ISA, "cp.async": cp-size is 4, 8 or 16; src-size <= cp-size bytes are read and the
// rest of the destination is zero-filled; both addresses must be aligned to cp-size.
void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size, EMU_SITE_PARAMS) {
    Launch& L = launch();
    if (cp_size != 4 && cp_size != 8 && cp_size != 16)
        fail(EMU_ERR_ADDRESS, "cp.async: cp-size %u is not 4, 8 or 16", cp_size);
    if (src_size > cp_size)
        fail(EMU_ERR_ADDRESS, "cp.async: src-size %u exceeds cp-size %u", src_size, cp_size);
    if (reinterpret_cast<uintptr_t>(dst) % cp_size || reinterpret_cast<uintptr_t>(src) % cp_size)
        fail(EMU_ERR_ADDRESS, "cp.async: dst %p or src %p not aligned to %u bytes", dst, src,
             cp_size);
    if (L.race) race::cp_async_write(L, *L.current, dst, cp_size, race::site(site_file, site_line, "cp.async"));
    L.current->uncommitted.push_back(CpOp{static_cast<unsigned char*>(dst),
                                          static_cast<const unsigned char*>(src), cp_size,
                                          src_size});
}

// PTX ISA, "cp.async.commit_group": all of the thread's uncommitted cp.async operations
// form one group (an empty group if there are none).
void cp_async_commit() {
    Fiber* f = launch().current;
    f->groups.push_back(std::move(f->uncommitted));
    f->uncommitted.clear();
    f->cp_groups_committed += 1;
}

// PTX ISA, "cp.async.wait_group": waits until at most n of the thread's most recent groups
// are pending; older groups are complete. Uncommitted operations are not waited for.
void cp_async_wait(int n) {
    Launch& L = launch();
    Fiber* f = L.current;
    while (f->groups.size() > static_cast<size_t>(n < 0 ? 0 : n)) {
        perform(f->groups.front());
        f->groups.pop_front();
        f->cp_groups_retired += 1;
    }
    if (L.race) race::cp_async_retired(L, *f);
}

// elect.sync d|p, membermask (PTX ISA, "elect.sync"): a warp collective over the mask.
uint32_t elect_sync(unsigned mask, bool* leader) {
    arrive(Coll::Elect, 0, mask, nullptr, 0, 0, 32, nullptr);
    const Fiber* f = launch().current;
    *leader = f->out[0] == f->lane;
    return f->out[0];
}

}  // namespace emu
