// Warpgroup collectives: wgmma.mma_async with its fence, commit_group and wait_group, and
// setmaxnreg. A warpgroup is 4 consecutive warps (threads 128g .. 128g+127); each of these
// instructions is `.sync.aligned` over it, so it is emulated as a rendezvous of all 128
// threads: a thread blocks until the other 127 arrive at the same instruction, and a
// missing, exited or divergent thread is an error.
//
// Sources: PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"
// (wgmma.mma_async, wgmma.fence, wgmma.commit_group, wgmma.wait_group), its sections
// "Matrix Fragments for wgmma.mma_async.m64nNk16", "Shared Memory Matrix Layout",
// "Strides" / "Canonical Layouts" and "Matrix Descriptor Format"; "setmaxnreg".
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "emu_fp16.h"
#include "emu_internal.h"
#include "emu_race.h"

namespace emu {
namespace {

// "Matrix Descriptor Format": start address 13-0, leading dimension byte offset 29-16,
// stride dimension byte offset 45-32 (each encoded as (x & 0x3FFFF) >> 4), matrix base
// offset 51-49, swizzle mode 63-62 (0 none, 1 128-byte, 2 64-byte, 3 32-byte).
struct Desc {
    uint32_t start, lbo, sbo, base_offset, mode;
};

Desc decode(uint64_t d) {
    return Desc{static_cast<uint32_t>(d & 0x3fff) << 4, static_cast<uint32_t>(d >> 16 & 0x3fff) << 4,
                static_cast<uint32_t>(d >> 32 & 0x3fff) << 4, static_cast<uint32_t>(d >> 49 & 7),
                static_cast<uint32_t>(d >> 62 & 3)};
}

// 16-byte chunks per row of a swizzle atom: none 1, 128B 8, 64B 4, 32B 2.
uint32_t atom_chunks(uint32_t mode) {
    static const uint32_t w[4] = {1, 8, 4, 2};
    return w[mode];
}

// The swizzle of "Shared Memory Matrix Layout" on the shared-memory byte address: the
// 16-byte chunk index inside a span of W chunks is XORed with the 128-byte row index modulo
// W (address bits 4.. XOR bits 7..), so the pattern repeats every 1024 (128B), 512 (64B)
// or 256 (32B) bytes and depends on the absolute address (as TMA's swizzle does).
uint32_t swizzle(uint32_t addr, uint32_t mode) {
    const uint32_t w = atom_chunks(mode);
    return addr ^ (((addr >> 7) & (w - 1)) << 4);
}

// "Canonical Layouts" for 16-bit elements (T = 8 elements per 16-byte chunk), the offset of
// operand element (mn, k) from the start address before the swizzle:
//   K-major, no swizzle: ((8,m),(T,2k)):((1T,SBO),(1,LBO))
//   K-major, swizzled:   ((8,m),(T,2k)):((WT,SBO),(1,T))   (W chunks per atom row; LBO unused)
//   MN-major, no swizzle: ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))
//   MN-major, swizzled:   ((T,W,m),(8,k)):((1,T,LBO),(WT,SBO))
// (shape:stride in elements). A core matrix is 8 rows of 16 bytes.
bool operand_address(uint64_t desc, int mn, int k, bool mn_major, uint32_t* out, char* why,
                     size_t why_len) {
    const Desc d = decode(desc);
    if (d.base_offset != 0) {
        snprintf(why, why_len, "matrix descriptor 0x%016llx has base offset %u: the PTX ISA does "
                 "not say how it enters the address, so the emulator supports only 0 (swizzle "
                 "atoms aligned to their repeat)", static_cast<unsigned long long>(desc),
                 d.base_offset);
        return false;
    }
    const uint32_t w = atom_chunks(d.mode);
    const uint32_t umn = static_cast<uint32_t>(mn), uk = static_cast<uint32_t>(k);
    uint32_t off;
    if (!mn_major) {
        const uint32_t kstep = d.mode == 0 ? d.lbo : 16;
        off = (umn % 8) * 16 * w + (umn / 8) * d.sbo + (uk % 8) * 2 + (uk / 8) * kstep;
    } else {
        const uint32_t mn_hi_stride = d.mode == 0 ? d.sbo : d.lbo;
        const uint32_t k_hi_stride = d.mode == 0 ? d.lbo : d.sbo;
        off = (umn % 8) * 2 + ((umn / 8) % w) * 16 + (umn / (8 * w)) * mn_hi_stride +
              (uk % 8) * 16 * w + (uk / 8) * k_hi_stride;
    }
    *out = swizzle(d.start + off, d.mode);
    return true;
}

double elem(uint16_t bits, int type) {
    return type == MMA_F16 ? static_cast<double>(f16_bits_to_f32(bits))
                           : static_cast<double>(bf16_bits_to_f32(bits));
}

// "Matrix Fragments for wgmma.mma_async.m64nNk16": thread t of the warpgroup, warp w = t/32,
// lane l = t%32, holds
//   D register r: row 16w + l/4 + 8((r>>1)&1), column 8(r>>2) + 2(l%4) + (r&1)
//   A register r (.f16x2/.bf16x2), half h: row 16w + l/4 + 8(r&1), k 8(r>>1) + 2(l%4) + h
int acc_row(int t, int r) { return 16 * (t / 32) + (t % 32) / 4 + 8 * ((r >> 1) & 1); }
int acc_col(int t, int r) { return 8 * (r >> 2) + 2 * (t % 4) + (r & 1); }

const char* op_name(const WgmmaOp& op) {
    return op.type == MMA_F16 ? (op.a_regs ? "wgmma.mma_async.f32.f16 (A in registers)"
                                           : "wgmma.mma_async.f32.f16")
                              : (op.a_regs ? "wgmma.mma_async.f32.bf16 (A in registers)"
                                           : "wgmma.mma_async.f32.bf16");
}

AccEntry* find_acc(Warpgroup& g, unsigned t, float* d) {
    for (AccEntry& e : g.acc[t])
        if (e.d == d) return &e;
    return nullptr;
}

// All 128 threads have arrived at a wgmma.mma_async: D = A B (+ D), in f32.
void complete_mma(Launch& L, Warpgroup& g, unsigned wg) {
    const WgmmaOp& op = g.op;
    if (g.need_fence) {
        set_errorf(L, EMU_ERR_WARP, "%s at %s:%d by warpgroup %u without a wgmma.fence since its "
                   "start or its last wgmma.wait_group (PTX ISA, wgmma.fence: required before the "
                   "first wgmma.mma_async and between register accesses and a wgmma.mma_async "
                   "using those registers)", op_name(op), op.file, op.line, wg);
        return;
    }
    const uint64_t seq = ++g.seq;
    const uint64_t site = L.race ? race::site(op.file, op.line, op_name(op)) : 0;
    char why[256];
    // A (64 x 16) and B (N x 16) as doubles; products are exact.
    static thread_local double A[64][16], B[256][16];
    const auto fetch = [&](uint64_t desc, bool mn_major, int mn, int k, const char* which,
                           double* out) {
        uint32_t addr = 0;
        if (!operand_address(desc, mn, k, mn_major, &addr, why, sizeof why)) {
            set_errorf(L, EMU_ERR_ADDRESS, "%s at %s:%d: %s", op_name(op), op.file, op.line, why);
            return false;
        }
        const unsigned char* p = shared_host(L, addr, 2);
        if (p == nullptr) {
            set_errorf(L, EMU_ERR_ADDRESS, "%s at %s:%d: %s element (%d, k %d) at shared address "
                       "0x%x is outside the %u bytes of dynamic shared memory at 0x%x",
                       op_name(op), op.file, op.line, which, mn, k, addr, L.shared_bytes,
                       kSharedBase);
            return false;
        }
        uint16_t bits;
        memcpy(&bits, p, 2);
        *out = elem(bits, op.type);
        if (L.race) race::wgmma_read(L, wg, seq, p, 2, site);
        return true;
    };
    if (op.a_regs) {
        for (unsigned t = 0; t < 128; ++t)
            for (int r = 0; r < 4; ++r)
                for (int h = 0; h < 2; ++h) {
                    const int row = 16 * (t / 32) + (t % 32) / 4 + 8 * (r & 1);
                    const int k = 8 * (r >> 1) + 2 * (t % 4) + h;
                    A[row][k] = elem(static_cast<uint16_t>(g.a[t][r] >> (16 * h)), op.type);
                }
    } else {
        for (int m = 0; m < 64; ++m)
            for (int k = 0; k < 16; ++k)
                if (!fetch(op.desc_a, op.trans_a != 0, m, k, "A", &A[m][k])) return;
    }
    for (int n = 0; n < op.n; ++n)
        for (int k = 0; k < 16; ++k)
            if (!fetch(op.desc_b, op.trans_b != 0, n, k, "B", &B[n][k])) return;
    const double sa = op.scale_a, sb = op.scale_b;
    const int regs = op.n / 2;
    for (unsigned t = 0; t < 128; ++t) {
        float* d = g.d[t];
        AccEntry* e = find_acc(g, t, d);
        float c[128];
        if (e != nullptr) {
            // Accumulating into registers a pending wgmma of the same shape writes: ordered
            // by the hardware ("wgmma.fence" exception), so the pending result is the input.
            if (e->count != regs) {
                set_errorf(L, EMU_ERR_WARP, "%s at %s:%d: accumulator array %p of thread %u is "
                           "still the destination of a pending wgmma with %d registers, this one "
                           "has %d", op_name(op), op.file, op.line, static_cast<void*>(d),
                           128 * wg + t, e->count, regs);
                return;
            }
            memcpy(c, e->values, sizeof(float) * regs);
        } else {
            memcpy(c, d, sizeof(float) * regs);
            g.acc[t].emplace_back();
            e = &g.acc[t].back();
            e->d = d;
            e->count = regs;
        }
        for (int r = 0; r < regs; ++r) {
            const int row = acc_row(static_cast<int>(t), r), col = acc_col(static_cast<int>(t), r);
            float acc = op.scale_d ? c[r] : 0.0f;
            for (int k = 0; k < 16; ++k)
                acc = static_cast<float>(static_cast<double>(acc) + (sa * A[row][k]) * (sb * B[col][k]));
            e->values[r] = acc;
            d[r] = NAN;  // poisoned until the wait_group that retires this operation
        }
        e->last_seq = seq;
    }
}

void complete_wait(Launch& L, Warpgroup& g, unsigned wg, int n) {
    while (g.groups.size() > static_cast<size_t>(n)) {
        g.retired = g.groups.front();
        g.groups.pop_front();
    }
    for (unsigned t = 0; t < 128; ++t) {
        auto& v = g.acc[t];
        for (size_t i = 0; i < v.size();) {
            if (v[i].last_seq <= g.retired) {
                memcpy(v[i].d, v[i].values, sizeof(float) * v[i].count);
                v[i] = v.back();
                v.pop_back();
            } else {
                ++i;
            }
        }
    }
    g.need_fence = true;
    if (L.race) race::wgmma_retired(L, wg, g.retired);
}

void complete(Launch& L, Warpgroup& g, unsigned wg) {
    switch (g.kind) {
        case WgColl::Fence: g.need_fence = false; break;
        case WgColl::Mma: complete_mma(L, g, wg); break;
        case WgColl::Commit:
            // An empty group when nothing is uncommitted ("wgmma.commit_group").
            g.groups.push_back(g.seq);
            g.committed = g.seq;
            break;
        case WgColl::Wait: complete_wait(L, g, wg, g.arg); break;
        case WgColl::Setmaxnreg:
        case WgColl::None: break;
    }
    for (unsigned t = 0; t < 128; ++t) L.fibers[128 * wg + t].state = FState::Runnable;
    g.kind = WgColl::None;
    g.arrived = 0;
    memset(g.arrived_mask, 0, sizeof g.arrived_mask);
}

// A thread arrives at a warpgroup collective; returns once all 128 have.
void wg_arrive(WgColl kind, int arg, const WgmmaOp* op, float* d, const uint32_t* a_regs) {
    Launch& L = launch();
    Fiber* f = L.current;
    const unsigned wg = f->tid / 128, t = f->tid % 128;
    char who[96];
    describe_thread(*f, who, sizeof who);
    if (128 * (wg + 1) > L.nthreads)
        fail(EMU_ERR_WARP, "%s: %s belongs to warpgroup %u, which has only %u of its 128 threads "
             "in a block of %u (a warpgroup is 4 consecutive warps)", wg_coll_name(kind), who, wg,
             L.nthreads - 128 * wg, L.nthreads);
    for (unsigned i = 0; i < 128; ++i)
        if (L.fibers[128 * wg + i].state == FState::Exited)
            fail(EMU_ERR_WARP, "%s: thread %u of warpgroup %u has exited; all 128 threads must "
                 "execute it (.sync.aligned)", wg_coll_name(kind), 128 * wg + i, wg);
    Warpgroup& g = *L.warpgroups[wg];
    if (g.kind == WgColl::None) {
        g.kind = kind;
        g.arg = arg;
        if (op) g.op = *op;
    } else if (g.kind != kind || g.arg != arg) {
        fail(EMU_ERR_WARP, "divergent warpgroup collectives: %s is at %s (%d) while %u threads "
             "of warpgroup %u are at %s (%d)", who, wg_coll_name(kind), arg, g.arrived, wg,
             wg_coll_name(g.kind), g.arg);
    } else if (op) {
        const WgmmaOp& o = g.op;
        if (o.type != op->type || o.n != op->n || o.a_regs != op->a_regs ||
            (!o.a_regs && o.desc_a != op->desc_a) || o.desc_b != op->desc_b ||
            o.scale_d != op->scale_d || o.scale_a != op->scale_a || o.scale_b != op->scale_b ||
            o.trans_a != op->trans_a || o.trans_b != op->trans_b)
            fail(EMU_ERR_WARP, "%s at %s:%d: %s passes operands (n %d, desc a 0x%016llx, desc b "
                 "0x%016llx, scale-d %d) that differ from those of the %u threads of warpgroup "
                 "%u already there (n %d, desc a 0x%016llx, desc b 0x%016llx, scale-d %d)",
                 op_name(*op), op->file, op->line, who, op->n,
                 static_cast<unsigned long long>(op->desc_a),
                 static_cast<unsigned long long>(op->desc_b), op->scale_d, g.arrived, wg, o.n,
                 static_cast<unsigned long long>(o.desc_a),
                 static_cast<unsigned long long>(o.desc_b), o.scale_d);
    }
    g.d[t] = d;
    if (a_regs) memcpy(g.a[t], a_regs, sizeof g.a[t]);
    g.arrived_mask[t / 32] |= 1u << (t % 32);
    g.arrived += 1;
    f->state = FState::Warpgroup;
    if (g.arrived == 128) complete(L, g, wg);
    if (L.status != EMU_OK) fail(L.status, "%s", L.error.c_str());
    yield_to_scheduler(L, f);
}

}  // namespace

const char* wg_coll_name(WgColl k) {
    switch (k) {
        case WgColl::Fence: return "wgmma.fence";
        case WgColl::Mma: return "wgmma.mma_async";
        case WgColl::Commit: return "wgmma.commit_group";
        case WgColl::Wait: return "wgmma.wait_group";
        case WgColl::Setmaxnreg: return "setmaxnreg";
        case WgColl::None: break;
    }
    return "?";
}

void warpgroups_reset(Launch& L) {
    for (auto& g : L.warpgroups) {
        g->kind = WgColl::None;
        g->arrived = 0;
        memset(g->arrived_mask, 0, sizeof g->arrived_mask);
        g->need_fence = true;
        g->seq = g->committed = g->retired = 0;
        g->groups.clear();
        for (auto& v : g->acc) v.clear();
    }
}

void warpgroup_thread_exit(Launch& L, Fiber& f) {
    const unsigned wg = f.tid / 128;
    if (wg >= L.warpgroups.size()) return;
    const Warpgroup& g = *L.warpgroups[wg];
    if (g.kind == WgColl::None) return;
    char who[96];
    describe_thread(f, who, sizeof who);
    set_errorf(L, EMU_ERR_WARP, "%s exited while %u threads of its warpgroup %u wait at %s", who,
               g.arrived, wg, wg_coll_name(g.kind));
}

// ---------------------------------------------------------------------------------------
// Entry points called from emulated kernels (through cuda/common/ptx.cuh).
// ---------------------------------------------------------------------------------------
void wgmma_fence() { wg_arrive(WgColl::Fence, 0, nullptr, nullptr, nullptr); }
void wgmma_commit() { wg_arrive(WgColl::Commit, 0, nullptr, nullptr, nullptr); }

// "wgmma.wait_group N": waits until at most N of the most recent wgmma-groups are pending
// and all earlier ones are complete; only then may the accumulators be read.
void wgmma_wait(int n) {
    if (n < 0 || n > 7) fail(EMU_ERR_WARP, "wgmma.wait_group %d: N must be in [0, 7]", n);
    wg_arrive(WgColl::Wait, n, nullptr, nullptr, nullptr);
}

void wgmma_mma(MmaType type, int n, float* d, uint64_t desc_a, const uint32_t* a_regs,
               uint64_t desc_b, int scale_d, int scale_a, int scale_b, int trans_a, int trans_b,
               EMU_SITE_PARAMS) {
    WgmmaOp op;
    op.type = type;
    op.n = n;
    op.a_regs = a_regs != nullptr;
    op.desc_a = desc_a;
    op.desc_b = desc_b;
    op.scale_d = scale_d != 0;
    op.scale_a = scale_a;
    op.scale_b = scale_b;
    op.trans_a = trans_a;
    op.trans_b = trans_b;
    op.file = site_file;
    op.line = site_line;
    // "wgmma.mma_async": .m64nNk16 with N a multiple of 8 in [8, 256] for .f16/.bf16; the
    // immediates imm-scale-a/b are 1 or -1 and imm-trans-a/b 0 or 1 (A from registers has no
    // imm-trans-a).
    if (n < 8 || n > 256 || n % 8 != 0)
        fail(EMU_ERR_WARP, "%s at %s:%d: N = %d is not a multiple of 8 in [8, 256]", op_name(op),
             site_file, site_line, n);
    if ((scale_a != 1 && scale_a != -1) || (scale_b != 1 && scale_b != -1) ||
        (trans_a != 0 && trans_a != 1) || (trans_b != 0 && trans_b != 1) || (a_regs && trans_a))
        fail(EMU_ERR_WARP, "%s at %s:%d: invalid immediates scale-a %d scale-b %d trans-a %d "
             "trans-b %d", op_name(op), site_file, site_line, scale_a, scale_b, trans_a, trans_b);
    wg_arrive(WgColl::Mma, 0, &op, d, a_regs);
}

// "setmaxnreg": imm-reg-count in [24, 256] and a multiple of 8, executed by all warps of
// the warpgroup. Registers are not modelled, so beyond these checks it does nothing.
void setmaxnreg(bool increase, int count) {
    if (count < 24 || count > 256 || count % 8 != 0)
        fail(EMU_ERR_WARP, "setmaxnreg.%s %d: the count must be a multiple of 8 in [24, 256]",
             increase ? "inc" : "dec", count);
    wg_arrive(WgColl::Setmaxnreg, (increase ? 0x10000 : 0) | count, nullptr, nullptr, nullptr);
}

}  // namespace emu

extern "C" int emu_wgmma_operand_address(uint64_t desc, int mn, int k, int major,
                                         uint32_t* addr, char* err, size_t err_len) {
    char why[256] = "";
    if (!emu::operand_address(desc, mn, k, major != 0, addr, why, sizeof why)) {
        if (err && err_len) snprintf(err, err_len, "%s", why);
        return EMU_ERR_ADDRESS;
    }
    if (err && err_len) err[0] = 0;
    return EMU_OK;
}
