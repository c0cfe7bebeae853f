// The race checker: happens-before race detection on shared memory with vector clocks.
//
// Agents. Each thread of the block is an agent; so is the cp.async unit of each thread (its
// copies land between issue and cp.async.wait_group), the wgmma unit of each warpgroup (it
// reads its operands between issue and wgmma.wait_group) and, per mbarrier, the TMA loads
// completing on it (they land before the phase completes). Every thread keeps a vector
// clock over all agents; an access is recorded as (agent, clock, site).
//
// Synchronisation joins clocks: __syncthreads (all threads), __syncwarp (its lanes),
// mbarrier.arrive releases the thread's clock into the current phase and a completed
// try_wait acquires the phase's clock, which also carries the TMA loads of that phase;
// cp.async.wait_group acquires the thread's own retired copy groups, wgmma.wait_group the
// warpgroup's retired operations. fence.proxy.async marks the thread's earlier writes as
// visible to the async proxy (wgmma operands from descriptors).
//
// Shadow memory: per shared-memory byte the last write and the reads since it that are not
// ordered before one another. An access races with a recorded one when the recorded one
// does not happen before it (its agent's clock in the accessing view is older), unless both
// are reads or both atomics. Accesses are observed (a) in the runtime for every emulated
// instruction (ldmatrix, cp.async, wgmma, TMA, atomics) and (b) in the kernel's plain C++
// loads and stores: the race-checking copy of every kernel is compiled with
// -fsanitize=thread, whose instrumentation calls the __tsan_* hooks below for each memory
// access; they keep only addresses in dynamic shared memory and in the program's static
// thread-local block (where `__shared__` variables live, see cuda_emu.h).
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu_internal.h"
#include "emu_race.h"

namespace emu {

struct Acc {
    uint64_t site = 0;
    uint32_t clock = 0;  // 0: none
    uint16_t agent = 0;
    uint16_t thread = 0;  // the thread that did or issued it; kAtomic when atomic
};
constexpr uint16_t kAtomic = 0x8000;

struct Cell {
    Acc w;
    uint32_t nr = 0;    // reads in r[] (at most 2) or, with more != 0, in overflow[more - 1]
    uint32_t more = 0;
    Acc r[2];
};

struct Report {
    int kind;  // 0 read-after-write, 1 write-after-read, 2 write-after-write, 3 proxy, 4 init
    Acc first, second;
    std::string where;
};

constexpr unsigned kSlots = 64;  // mbarriers per block

struct RaceState {
    unsigned n = 0, nwg = 0, agents = 0;
    std::vector<uint32_t> vc;  // n rows of `agents` clocks
    std::vector<uint32_t> fence_clock;
    std::vector<Cell> cells;   // dynamic shared memory, one per byte
    std::unordered_map<uintptr_t, Cell> statics;  // static __shared__ bytes
    std::vector<std::vector<Acc>> overflow;
    struct Slot {
        std::vector<uint32_t> cur, done[2];
        uint16_t init_thread = 0;
        uint32_t init_clock = 0;
    };
    std::vector<Slot> slots;
    unsigned next_slot = 0;
    // Per named barrier (bar.sync / bar.arrive id): the join of this phase's arrivals, and
    // of the last completed phase's (what its bar.sync waiters acquire).
    std::vector<uint32_t> named_cur[kNamedBarriers], named_done[kNamedBarriers];
    std::vector<uint32_t> meet;  // view of the warpgroup issuing a wgmma
    uint64_t meet_seq = 0;
    unsigned meet_wg = ~0u;
    uintptr_t win_lo = 0, win_len = 0, tls_lo = 0, tls_hi = 0, skip_lo = 0, skip_hi = 0;
    std::vector<Report> reports;
    size_t total = 0;
    EmuDim3 block_idx{};
    uint32_t* row(unsigned t) { return vc.data() + static_cast<size_t>(t) * agents; }
    unsigned cp_agent(unsigned t) const { return n + t; }
    unsigned wg_agent(unsigned g) const { return 2 * n + g; }
    unsigned tma_agent(unsigned s) const { return 2 * n + nwg + s; }
    bool is_thread(unsigned a) const { return a < n; }
};

namespace {

thread_local RaceState* tls_race = nullptr;

struct SiteInfo {
    const char* file;
    int line;
    const char* op;
};
thread_local std::vector<SiteInfo> tls_sites;
thread_local std::unordered_map<uint64_t, uint32_t> tls_site_index;

// The executable's static TLS block (x86-64: just below the thread pointer), where the
// `thread_local` storage of static __shared__ variables lives.
int tls_phdr(struct dl_phdr_info* info, size_t, void* out) {
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type == PT_TLS) {
            auto* o = static_cast<size_t*>(out);
            o[0] = info->dlpi_phdr[i].p_memsz;
            o[1] = info->dlpi_phdr[i].p_align;
        }
    }
    return 1;  // the first object is the executable
}

void find_tls_block(RaceState& R) {
    R.tls_lo = R.tls_hi = 0;
#if defined(__x86_64__)
    size_t info[2] = {0, 1};
    dl_iterate_phdr(tls_phdr, info);
    uintptr_t tp;
    asm volatile("movq %%fs:0, %0" : "=r"(tp));
    const size_t align = info[1] ? info[1] : 1;
    const size_t size = (info[0] + align - 1) / align * align + align;
    const uintptr_t lo = tp - size, probe = reinterpret_cast<uintptr_t>(smem);
    if (probe >= lo && probe < tp) {  // this library is part of the executable
        R.tls_lo = lo;
        R.tls_hi = tp;
    }
#endif
    R.skip_lo = reinterpret_cast<uintptr_t>(&tls_vars);
    R.skip_hi = R.skip_lo + sizeof tls_vars;
}

std::string short_path(const char* file) {
    std::string s = file ? file : "?";
    const size_t k = s.rfind("kernels/");
    return k == std::string::npos ? s : s.substr(k);
}

// "function at file:line" of a code address in the instrumented kernel, by addr2line.
std::string symbolize(uint64_t pc) {
    static thread_local std::unordered_map<uint64_t, std::string> cache;
    auto it = cache.find(pc);
    if (it != cache.end()) return it->second;
    char buf[512];
    std::string out;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(pc), &info) && info.dli_fname) {
        const uintptr_t off = pc - 1 - reinterpret_cast<uintptr_t>(info.dli_fbase);
        snprintf(buf, sizeof buf, "addr2line -C -f -e '%s' 0x%lx 2>/dev/null", info.dli_fname,
                 static_cast<unsigned long>(off));
        if (FILE* p = popen(buf, "r")) {
            char fn[512] = "", loc[512] = "";
            if (fgets(fn, sizeof fn, p) && fgets(loc, sizeof loc, p)) {
                fn[strcspn(fn, "\n")] = 0;
                loc[strcspn(loc, "\n")] = 0;
                char* disc = strstr(loc, " (discriminator");
                if (disc) *disc = 0;
                if (loc[0] != '?') out = "code at " + short_path(loc) + " in " + fn;
            }
            pclose(p);
        }
        if (out.empty()) {
            snprintf(buf, sizeof buf, "code address %s+0x%lx (no line information)",
                     info.dli_fname, static_cast<unsigned long>(off));
            out = buf;
        }
    } else {
        snprintf(buf, sizeof buf, "code address 0x%llx", static_cast<unsigned long long>(pc));
        out = buf;
    }
    cache.emplace(pc, out);
    return out;
}

std::string describe_site(uint64_t site) {
    if (site >> 63) {
        const SiteInfo& s = tls_sites[static_cast<size_t>(site & 0xffffffffu)];
        return std::string(s.op) + " at " + short_path(s.file) + ":" + std::to_string(s.line);
    }
    return symbolize(site);
}

std::string thread_name(const Launch& L, unsigned t) {
    char b[64];
    snprintf(b, sizeof b, "thread (%u,%u,%u)", t % L.block.x, (t / L.block.x) % L.block.y,
             t / (L.block.x * L.block.y));
    return b;
}

std::string describe_acc(const Launch& L, const RaceState& R, const Acc& a) {
    const unsigned t = a.thread & ~kAtomic;
    std::string who;
    if (R.is_thread(a.agent)) who = thread_name(L, t);
    else if (a.agent < 2 * R.n) who = "the cp.async copy of " + thread_name(L, t);
    else if (a.agent < 2 * R.n + R.nwg)
        who = "the wgmma of warpgroup " + std::to_string(a.agent - 2 * R.n) + " (threads " +
              std::to_string(128 * (a.agent - 2 * R.n)) + ".." +
              std::to_string(128 * (a.agent - 2 * R.n) + 127) + ")";
    else who = "the TMA load issued by " + thread_name(L, t);
    return describe_site(a.site) + ", by " + who + ((a.thread & kAtomic) ? " (atomic)" : "");
}

bool ordered(const RaceState& R, const Acc& prior, const Acc& now, const uint32_t* view) {
    if (prior.clock == 0) return true;
    if (prior.agent == now.agent && R.is_thread(now.agent)) return true;  // program order
    if ((prior.thread & kAtomic) && (now.thread & kAtomic)) return true;
    return view[prior.agent] >= prior.clock;
}

void add_report(Launch& L, RaceState& R, int kind, const Acc& first, const Acc& second,
            uintptr_t addr) {
    R.total += 1;
    for (const Report& r : R.reports)
        if (r.kind == kind && r.first.site == first.site && r.second.site == second.site) return;
    if (R.reports.size() >= 8) return;
    char where[160];
    if (addr - R.win_lo < R.win_len)
        snprintf(where, sizeof where, "dynamic shared memory byte %lu (shared address 0x%lx) in "
                 "block (%u,%u,%u)", static_cast<unsigned long>(addr - R.win_lo),
                 static_cast<unsigned long>(addr - R.win_lo + kSharedBase), R.block_idx.x,
                 R.block_idx.y, R.block_idx.z);
    else
        snprintf(where, sizeof where, "a static __shared__ variable (host address %p) in block "
                 "(%u,%u,%u)", reinterpret_cast<void*>(addr), R.block_idx.x, R.block_idx.y,
                 R.block_idx.z);
    R.reports.push_back(Report{kind, first, second, where});
    (void)L;
}

Cell* cell_of(RaceState& R, uintptr_t a) {
    if (a - R.win_lo < R.win_len) return &R.cells[a - R.win_lo];
    if (a >= R.tls_lo && a < R.tls_hi && !(a >= R.skip_lo && a < R.skip_hi)) {
        const uintptr_t lo = reinterpret_cast<uintptr_t>(smem);
        if (a - lo < EMU_MAX_SHARED_BYTES) return nullptr;  // past shared_bytes: see plain()
        return &R.statics[a];
    }
    return nullptr;
}

void record(Launch& L, RaceState& R, uintptr_t addr, unsigned bytes, bool write, const Acc& a,
            const uint32_t* view, bool async_read) {
    for (unsigned i = 0; i < bytes; ++i) {
        Cell* c = cell_of(R, addr + i);
        if (c == nullptr) continue;
        if (!ordered(R, c->w, a, view)) add_report(L, R, write ? 2 : 0, c->w, a, addr + i);
        else if (async_read && c->w.clock && R.is_thread(c->w.agent) &&
                 R.fence_clock[c->w.agent] < c->w.clock)
            add_report(L, R, 3, c->w, a, addr + i);
        Acc* rs = c->more ? R.overflow[c->more - 1].data() : c->r;
        uint32_t nr = c->more ? static_cast<uint32_t>(R.overflow[c->more - 1].size()) : c->nr;
        if (write) {
            for (uint32_t k = 0; k < nr; ++k)
                if (!ordered(R, rs[k], a, view)) add_report(L, R, 1, rs[k], a, addr + i);
            c->w = a;
            c->nr = 0;
            if (c->more) R.overflow[c->more - 1].clear();
            continue;
        }
        // A read: keep only the reads that are not ordered before this one.
        std::vector<Acc> kept;
        Acc keep_inline[2];
        uint32_t nk = 0;
        const bool big = c->more != 0;
        for (uint32_t k = 0; k < nr; ++k) {
            const Acc& r = rs[k];
            const bool before = r.agent == a.agent || view[r.agent] >= r.clock;
            if (before) continue;
            if (big) kept.push_back(r);
            else keep_inline[nk++] = r;
        }
        if (big) {
            kept.push_back(a);
            R.overflow[c->more - 1].swap(kept);
        } else if (nk < 2) {
            c->r[0] = keep_inline[0];
            c->r[1] = keep_inline[1];
            c->r[nk] = a;
            c->nr = nk + 1;
        } else {
            R.overflow.emplace_back(std::vector<Acc>{keep_inline[0], keep_inline[1], a});
            c->more = static_cast<uint32_t>(R.overflow.size());
        }
    }
}

Acc thread_acc(const RaceState& R, unsigned t, uint64_t site, bool atomic) {
    Acc a;
    a.site = site;
    a.agent = static_cast<uint16_t>(t);
    a.clock = R.vc[static_cast<size_t>(t) * R.agents + t];
    a.thread = static_cast<uint16_t>(t | (atomic ? kAtomic : 0));
    return a;
}

void join_into(uint32_t* dst, const uint32_t* src, unsigned n) {
    for (unsigned i = 0; i < n; ++i) dst[i] = std::max(dst[i], src[i]);
}

// An instrumented plain load or store of the kernel.
void plain(const void* p, unsigned bytes, bool write, void* pc) {
    RaceState* R = tls_race;
    if (R == nullptr) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const bool in_window = a - R->win_lo < R->win_len;
    if (!in_window && !(a >= R->tls_lo && a < R->tls_hi)) return;
    Launch& L = *tls_launch;
    Fiber* f = L.current;
    if (f == nullptr) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(smem);
    if (!in_window && a - lo < EMU_MAX_SHARED_BYTES)
        fail(EMU_ERR_ADDRESS, "%s of %u bytes at dynamic shared memory byte %lu, past the "
             "launch's %u bytes (%s)", write ? "store" : "load", bytes,
             static_cast<unsigned long>(a - lo), L.shared_bytes,
             symbolize(reinterpret_cast<uint64_t>(pc)).c_str());
    const Acc acc = thread_acc(*R, f->tid, reinterpret_cast<uint64_t>(pc), false);
    record(L, *R, a, bytes, write, acc, R->row(f->tid), false);
}

}  // namespace

namespace race {

uint64_t site(const char* file, int line, const char* op) {
    const uint64_t key = (reinterpret_cast<uint64_t>(file) * 0x9e3779b97f4a7c15ull) ^
                         (static_cast<uint64_t>(line) << 1) ^ reinterpret_cast<uint64_t>(op);
    auto it = tls_site_index.find(key);
    if (it != tls_site_index.end()) {
        const SiteInfo& s = tls_sites[it->second];
        if (s.file == file && s.line == line && s.op == op) return (1ull << 63) | it->second;
    }
    tls_sites.push_back(SiteInfo{file, line, op});
    const uint32_t idx = static_cast<uint32_t>(tls_sites.size() - 1);
    tls_site_index[key] = idx;
    return (1ull << 63) | idx;
}

RaceState* create(Launch& L) {
    auto* R = new RaceState;
    R->n = L.nthreads;
    R->nwg = (L.nthreads + 127) / 128;
    R->agents = 2 * R->n + R->nwg + kSlots;
    R->vc.assign(static_cast<size_t>(R->n) * R->agents, 0);
    R->fence_clock.assign(R->n, 0);
    R->slots.resize(kSlots);
    find_tls_block(*R);
    tls_race = R;
    return R;
}

void destroy(RaceState* r) {
    if (tls_race == r) tls_race = nullptr;
    delete r;
}

void block_begin(Launch& L) {
    RaceState& R = *L.race;
    std::fill(R.vc.begin(), R.vc.end(), 0u);
    for (unsigned t = 0; t < R.n; ++t) R.row(t)[t] = 1;
    std::fill(R.fence_clock.begin(), R.fence_clock.end(), 0u);
    R.cells.assign(L.shared_bytes, Cell{});
    R.statics.clear();
    R.overflow.clear();
    R.next_slot = 0;
    for (unsigned b = 0; b < kNamedBarriers; ++b) {
        R.named_cur[b].assign(R.agents, 0u);
        R.named_done[b].assign(R.agents, 0u);
    }
    R.meet_seq = 0;
    R.meet_wg = ~0u;
    R.win_lo = reinterpret_cast<uintptr_t>(smem);
    R.win_len = L.shared_bytes;
    R.block_idx = L.fibers.empty() ? EmuDim3{} : L.fibers[0].vars.block_idx;
}

std::string report(Launch& L) {
    RaceState& R = *L.race;
    if (R.reports.empty()) return "";
    static const char* kinds[] = {
        "read-after-write: the read is not ordered after the write",
        "write-after-read: the write is not ordered after the read",
        "write-after-write: the second write is not ordered after the first",
        "generic-proxy write read by the async proxy without fence.proxy.async after it",
        "mbarrier used before its initialisation is visible"};
    std::string s = "race checker: " + std::to_string(R.total) +
                    " unordered access(es) to shared memory, " +
                    std::to_string(R.reports.size()) + " distinct pair(s) of sites:";
    for (size_t i = 0; i < R.reports.size(); ++i) {
        const Report& r = R.reports[i];
        s += "\n  [" + std::to_string(i + 1) + "] " + kinds[r.kind] + ", at " + r.where +
             "\n      first:  " + describe_acc(L, R, r.first) +
             "\n      second: " + describe_acc(L, R, r.second);
    }
    return s;
}

void barrier_release(Launch& L) {
    RaceState& R = *L.race;
    std::vector<uint32_t> j(R.row(0), R.row(0) + R.agents);
    for (unsigned t = 1; t < R.n; ++t) join_into(j.data(), R.row(t), R.agents);
    for (unsigned t = 0; t < R.n; ++t) {
        memcpy(R.row(t), j.data(), sizeof(uint32_t) * R.agents);
        R.row(t)[t] += 1;
    }
}

// Named barriers: an arrival (bar.sync or bar.arrive) releases the thread's clock into the
// phase; when the phase completes its join is what every bar.sync waiter of the phase
// acquires. bar.arrive threads acquire nothing (they do not wait).
void named_arrive(Launch& L, Fiber& f, unsigned id) {
    RaceState& R = *L.race;
    join_into(R.named_cur[id].data(), R.row(f.tid), R.agents);
    R.row(f.tid)[f.tid] += 1;
}

void named_complete(Launch& L, unsigned id) {
    RaceState& R = *L.race;
    R.named_done[id] = R.named_cur[id];
    std::fill(R.named_cur[id].begin(), R.named_cur[id].end(), 0u);
}

void named_acquire(Launch& L, Fiber& f, unsigned id) {
    RaceState& R = *L.race;
    join_into(R.row(f.tid), R.named_done[id].data(), R.agents);
}

void warp_sync(Launch& L, unsigned warp, unsigned lanes) {
    RaceState& R = *L.race;
    std::vector<uint32_t> j(R.agents, 0);
    for (unsigned l = 0; l < 32; ++l)
        if (lanes >> l & 1u) join_into(j.data(), R.row(32 * warp + l), R.agents);
    for (unsigned l = 0; l < 32; ++l)
        if (lanes >> l & 1u) {
            const unsigned t = 32 * warp + l;
            memcpy(R.row(t), j.data(), sizeof(uint32_t) * R.agents);
            R.row(t)[t] += 1;
        }
}

void cp_async_retired(Launch& L, Fiber& f) {
    RaceState& R = *L.race;
    uint32_t& c = R.row(f.tid)[R.cp_agent(f.tid)];
    c = std::max(c, f.cp_groups_retired);
}

void mbar_init(Launch& L, Mbarrier& m) {
    RaceState& R = *L.race;
    if (m.race_slot < 0) {
        if (R.next_slot >= kSlots) {
            set_errorf(L, EMU_ERR_TRAP, "race checker: more than %u mbarriers in a block", kSlots);
            return;
        }
        m.race_slot = static_cast<int>(R.next_slot++);
    }
    RaceState::Slot& s = R.slots[static_cast<size_t>(m.race_slot)];
    s.cur.assign(R.agents, 0);
    s.done[0].assign(R.agents, 0);
    s.done[1].assign(R.agents, 0);
    Fiber& f = *L.current;
    s.init_thread = static_cast<uint16_t>(f.tid);
    s.init_clock = R.row(f.tid)[f.tid];
}

namespace {
// An mbarrier operation by thread f must see the mbarrier's initialisation.
void check_init(Launch& L, RaceState& R, Fiber& f, Mbarrier& m, const char* op) {
    if (m.race_slot < 0) return;
    const RaceState::Slot& s = R.slots[static_cast<size_t>(m.race_slot)];
    if (s.init_thread == f.tid || R.row(f.tid)[s.init_thread] >= s.init_clock) return;
    Acc init;
    init.site = site("mbarrier.init", 0, "mbarrier.init");
    init.agent = s.init_thread;
    init.thread = s.init_thread;
    init.clock = s.init_clock;
    add_report(L, R, 4, init, thread_acc(R, f.tid, site("mbarrier", 0, op), false),
           reinterpret_cast<uintptr_t>(m.addr));
}
}  // namespace

void mbar_arrive(Launch& L, Fiber& f, Mbarrier& m) {
    RaceState& R = *L.race;
    check_init(L, R, f, m, "mbarrier.arrive");
    if (m.race_slot < 0) return;
    join_into(R.slots[static_cast<size_t>(m.race_slot)].cur.data(), R.row(f.tid), R.agents);
    R.row(f.tid)[f.tid] += 1;
}

void mbar_phase_complete(Launch& L, Mbarrier& m) {
    RaceState& R = *L.race;
    if (m.race_slot < 0) return;
    RaceState::Slot& s = R.slots[static_cast<size_t>(m.race_slot)];
    std::vector<uint32_t>& done = s.done[m.phase & 1u];
    done = s.cur;
    done[R.tma_agent(static_cast<unsigned>(m.race_slot))] = m.phase + 1;
    std::fill(s.cur.begin(), s.cur.end(), 0u);
}

void mbar_acquire(Launch& L, Fiber& f, Mbarrier& m, unsigned parity) {
    RaceState& R = *L.race;
    check_init(L, R, f, m, "mbarrier.try_wait");
    if (m.race_slot < 0) return;
    join_into(R.row(f.tid), R.slots[static_cast<size_t>(m.race_slot)].done[parity & 1u].data(),
              R.agents);
}

void wgmma_retired(Launch& L, unsigned warpgroup, uint64_t seq) {
    RaceState& R = *L.race;
    for (unsigned t = 128 * warpgroup; t < 128 * (warpgroup + 1) && t < R.n; ++t) {
        uint32_t& c = R.row(t)[R.wg_agent(warpgroup)];
        c = std::max(c, static_cast<uint32_t>(seq));
    }
}

void proxy_fence(Launch& L, Fiber& f) {
    RaceState& R = *L.race;
    R.fence_clock[f.tid] = R.row(f.tid)[f.tid];
    R.row(f.tid)[f.tid] += 1;
}

void thread_access(Launch& L, Fiber& f, const void* p, unsigned bytes, bool write, bool atomic,
                   uint64_t s) {
    RaceState& R = *L.race;
    record(L, R, reinterpret_cast<uintptr_t>(p), bytes, write, thread_acc(R, f.tid, s, atomic),
           R.row(f.tid), false);
}

void cp_async_write(Launch& L, Fiber& f, const void* dst, unsigned bytes, uint64_t s) {
    RaceState& R = *L.race;
    Acc a;
    a.site = s;
    a.agent = static_cast<uint16_t>(R.cp_agent(f.tid));
    a.clock = f.cp_groups_committed + 1;  // the group it will belong to
    a.thread = static_cast<uint16_t>(f.tid);
    record(L, R, reinterpret_cast<uintptr_t>(dst), bytes, true, a, R.row(f.tid), false);
}

void tma_write(Launch& L, Fiber& f, Mbarrier& m, const void* dst, unsigned bytes, uint64_t s) {
    RaceState& R = *L.race;
    check_init(L, R, f, m, "cp.async.bulk.tensor");
    if (m.race_slot < 0) return;
    Acc a;
    a.site = s;
    a.agent = static_cast<uint16_t>(R.tma_agent(static_cast<unsigned>(m.race_slot)));
    a.clock = m.phase + 1;  // visible to whoever acquires the completion of this phase
    a.thread = static_cast<uint16_t>(f.tid);
    record(L, R, reinterpret_cast<uintptr_t>(dst), bytes, true, a, R.row(f.tid), false);
}

void wgmma_read(Launch& L, unsigned warpgroup, uint64_t seq, const void* p, unsigned bytes,
                uint64_t s) {
    RaceState& R = *L.race;
    // The operands must be visible to every thread of the warpgroup: the view is the meet of
    // their clocks (computed once per operation).
    if (R.meet_seq != seq || R.meet_wg != warpgroup) {
        R.meet.assign(R.row(128 * warpgroup), R.row(128 * warpgroup) + R.agents);
        for (unsigned t = 128 * warpgroup + 1; t < 128 * (warpgroup + 1); ++t) {
            const uint32_t* r = R.row(t);
            for (unsigned i = 0; i < R.agents; ++i) R.meet[i] = std::min(R.meet[i], r[i]);
        }
        R.meet_seq = seq;
        R.meet_wg = warpgroup;
    }
    Acc a;
    a.site = s;
    a.agent = static_cast<uint16_t>(R.wg_agent(warpgroup));
    a.clock = static_cast<uint32_t>(seq);
    a.thread = static_cast<uint16_t>(128 * warpgroup);
    record(L, R, reinterpret_cast<uintptr_t>(p), bytes, false, a, R.meet.data(), true);
}

}  // namespace race

void race_atomic(const void* p, unsigned bytes) {
    Launch* L = tls_launch;
    if (L == nullptr || L->race == nullptr || L->current == nullptr) return;
    race::thread_access(*L, *L->current, p, bytes, true, true,
                        reinterpret_cast<uint64_t>(__builtin_return_address(0)));
}

}  // namespace emu

// ---------------------------------------------------------------------------------------
// The ThreadSanitizer instrumentation ABI (what -fsanitize=thread makes the compiler call;
// GCC's tsan.c / LLVM's ThreadSanitizer pass), implemented here instead of by libtsan: only
// the race-checking copies of the kernels are compiled with it, and the hooks return at
// once outside a race-checking launch.
// ---------------------------------------------------------------------------------------
#define EMU_TSAN_ACCESS(name, size, write)                                              \
    extern "C" void name(void* p) {                                                     \
        emu::plain(p, size, write, __builtin_return_address(0));                        \
    }
#define EMU_TSAN_SIZES(prefix, write)                                                    \
    EMU_TSAN_ACCESS(prefix##1, 1, write)                                                 \
    EMU_TSAN_ACCESS(prefix##2, 2, write)                                                 \
    EMU_TSAN_ACCESS(prefix##4, 4, write)                                                 \
    EMU_TSAN_ACCESS(prefix##8, 8, write)                                                 \
    EMU_TSAN_ACCESS(prefix##16, 16, write)
EMU_TSAN_SIZES(__tsan_read, false)
EMU_TSAN_SIZES(__tsan_write, true)
EMU_TSAN_SIZES(__tsan_unaligned_read, false)
EMU_TSAN_SIZES(__tsan_unaligned_write, true)
EMU_TSAN_SIZES(__tsan_volatile_read, false)
EMU_TSAN_SIZES(__tsan_volatile_write, true)
extern "C" void __tsan_read_range(void* p, unsigned long n) {
    emu::plain(p, static_cast<unsigned>(n), false, __builtin_return_address(0));
}
extern "C" void __tsan_write_range(void* p, unsigned long n) {
    emu::plain(p, static_cast<unsigned>(n), true, __builtin_return_address(0));
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
