#!/usr/bin/env python3
"""The engine's CPU model call beside a plain PyTorch implementation of the same model.

A PyTorch implementation of ../shared/MODEL_SPEC.md (StreamDiT as this engine defines it),
written from the spec alone, runs on the same random weights as the engine (a checkpoint
written by `streamdit weights init`). The script first checks that both compute the same
function (one call on the same inputs: the engine's `streamdit forward` against PyTorch),
then times them alternating, round by round, on the same machine and thread count, and
prints the medians and their ratio. It also measures the machine's sgemm peak (PyTorch's
and numpy's BLAS, 2 threads) at the model's GEMM shapes, so the engine's call can be set
against it.

No test uses this script. Usage (PyTorch and numpy in some virtual environment):

    cargo build -p streamdit-tools --release
    python benches/torch_tiny.py --streamdit target/release/streamdit [--rounds 5]

The PyTorch side: `nn.functional.linear`, `scaled_dot_product_attention` per window (the
shifted layers as Swin does it: the grid rolled by the shift, every window masked to the
tokens of its own key), cross-attention K/V computed once per prompt as the engine does,
float32, `torch.inference_mode`, `torch.set_num_threads(threads)`.
"""

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

# The `tiny` profile (profiles/tiny.toml, MODEL_SPEC section 7).
TINY = dict(C=8, F=8, H=16, W=16, D=256, L=4, heads=4, Dff=768, window=(4, 8, 8), Lt=32, Dtxt=256)


def read_safetensors(path):
    """Every tensor of a safetensors file as float32 numpy arrays."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw = data[a:b]
        dtype = meta["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            raise ValueError(f"{path}: tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")
        out[name] = arr.reshape(meta["shape"]).astype(np.float32)
    return out


def write_safetensors(path, tensors):
    """float32 tensors into a safetensors file."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def ln(x):
    """LayerNorm without affine, eps 1e-6, biased variance."""
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def rms(u, gain):
    return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6) * gain


def gelu_tanh(z):
    return 0.5 * z * (1.0 + torch.tanh(0.7978845608 * (z + 0.044715 * z**3)))


class Model:
    """MODEL_SPEC section 2 in PyTorch, f32."""

    def __init__(self, w, m):
        self.w = {k: torch.from_numpy(v.copy()) for k, v in w.items()}
        self.m = m
        ft, ht, wt = m["F"], m["H"] // 2, m["W"] // 2
        self.grid = (ft, ht, wt)
        self.n = ft * ht * wt
        self.frame_of = torch.arange(self.n) // (ht * wt)
        # Per layer parity: the token permutation into windows and the window mask.
        self.windows = [self._windows(s) for s in (False, True)]
        self.ctx_kv = None

    def lin(self, x, name, bias=True):
        return F.linear(x, self.w[name + ".weight"], self.w[name + ".bias"] if bias else None)

    def _windows(self, shifted):
        """(perm, inverse, mask or None): tokens grouped into windows of the rolled grid."""
        fw, hw, ww = self.m["window"]
        g = self.grid
        s = (fw // 2, hw // 2, ww // 2) if shifted else (0, 0, 0)
        idx = torch.arange(self.n).reshape(g)
        f, i, j = torch.meshgrid(torch.arange(g[0]), torch.arange(g[1]), torch.arange(g[2]), indexing="ij")
        # MODEL_SPEC section 3: key = floor((pos + shift) / window), no modulo.
        key = ((f + s[0]) // fw) * 10000 + ((i + s[1]) // hw) * 100 + (j + s[2]) // ww
        rolled = torch.roll(idx, shifts=s, dims=(0, 1, 2))
        rkey = torch.roll(key, shifts=s, dims=(0, 1, 2))

        def part(t):
            t = t.reshape(g[0] // fw, fw, g[1] // hw, hw, g[2] // ww, ww)
            return t.permute(0, 2, 4, 1, 3, 5).reshape(-1, fw * hw * ww)

        perm, wkey = part(rolled), part(rkey)
        mask = (wkey[:, :, None] == wkey[:, None, :])[:, None] if shifted else None
        return perm.reshape(-1), torch.argsort(perm.reshape(-1)), mask

    def set_text(self, text, mask):
        w, m = self.w, self.m
        ctx = self.lin(gelu_tanh(self.lin(text, "text_proj.1")), "text_proj.2")
        ctx = ctx[mask != 0]
        dh = m["D"] // m["heads"]
        self.ctx_kv = []
        for l in range(m["L"]):
            kv = self.lin(ctx, f"blocks.{l}.cross.kv")
            k, v = kv[:, : m["D"]], kv[:, m["D"] :]
            k = rms(k.reshape(-1, m["heads"], dh), w[f"blocks.{l}.cross.k_norm"])
            v = v.reshape(-1, m["heads"], dh)
            self.ctx_kv.append((k.transpose(0, 1), v.transpose(0, 1)))

    def forward(self, x, tau):
        w, m = self.w, self.m
        D, heads = m["D"], m["heads"]
        dh = D // heads
        fr, c, hh, ww = x.shape
        ft, ht, wt = self.grid
        p = x.reshape(fr, c, ht, 2, wt, 2).permute(0, 2, 4, 1, 3, 5).reshape(self.n, c * 4)
        pos = w["pos_embed.t"][:, None, None] + w["pos_embed.h"][None, :, None] + w["pos_embed.w"][None, None]
        h = self.lin(p, "patch_embed") + pos.reshape(self.n, D)
        k = torch.arange(128, dtype=torch.float64)
        arg = 1000.0 * tau.double()[:, None] * torch.exp(-math.log(10000.0) * k / 128.0)
        e = torch.cat([torch.cos(arg), torch.sin(arg)], 1).float()
        t_emb = self.lin(F.silu(self.lin(e, "time_embed.1")), "time_embed.2")
        t_mod = self.lin(F.silu(t_emb), "time_mod").reshape(fr, 6, D)
        for l in range(m["L"]):
            mods = (t_mod + w[f"blocks.{l}.mod_table"])[self.frame_of]  # [N, 6, D]
            sh1, sc1, g1, sh2, sc2, g2 = mods.unbind(1)
            a = ln(h) * (1 + sc1) + sh1
            qkv = self.lin(a, f"blocks.{l}.attn.qkv").reshape(self.n, 3, heads, dh)
            q = rms(qkv[:, 0], w[f"blocks.{l}.attn.q_norm"])
            kk = rms(qkv[:, 1], w[f"blocks.{l}.attn.k_norm"])
            v = qkv[:, 2]
            perm, inv, mask = self.windows[l % 2]
            size = self.m["window"][0] * self.m["window"][1] * self.m["window"][2]
            nw = self.n // size

            def win(t):
                return t[perm].reshape(nw, size, heads, dh).transpose(1, 2)

            o = F.scaled_dot_product_attention(win(q), win(kk), win(v), attn_mask=mask)
            o = o.transpose(1, 2).reshape(self.n, D)[inv]
            h = h + g1 * self.lin(o, f"blocks.{l}.attn.out")
            cq = rms(self.lin(ln(h), f"blocks.{l}.cross.q").reshape(self.n, heads, dh), w[f"blocks.{l}.cross.q_norm"])
            ck, cv = self.ctx_kv[l]
            co = F.scaled_dot_product_attention(cq.transpose(0, 1), ck, cv).transpose(0, 1).reshape(self.n, D)
            h = h + self.lin(co, f"blocks.{l}.cross.out")
            a2 = ln(h) * (1 + sc2) + sh2
            ug = F.linear(a2, w[f"blocks.{l}.ffn.w13.weight"])
            u, g = ug[:, : m["Dff"]], ug[:, m["Dff"] :]
            h = h + g2 * F.linear(F.silu(u) * g, w[f"blocks.{l}.ffn.w2.weight"])
        fm = (t_emb[:, None] + w["final.mod_table"])[self.frame_of]
        out = self.lin(ln(h) * (1 + fm[:, 1]) + fm[:, 0], "final.linear")
        return out.reshape(fr, ht, wt, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(fr, c, hh, ww)


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def gemm_peak(threads, shapes, reps=20):
    """Best GFLOP/s of torch's and numpy's sgemm over the model's linear shapes."""
    res = {}
    for name, mm in (("torch", lambda a, b: a @ b), ("numpy", lambda a, b: a @ b)):
        best = 0.0
        for t, k, n in shapes:
            if name == "torch":
                a, b = torch.randn(t, k), torch.randn(k, n)
            else:
                a, b = np.random.randn(t, k).astype(np.float32), np.random.randn(k, n).astype(np.float32)
            for _ in range(3):
                mm(a, b)
            s = time.perf_counter()
            for _ in range(reps):
                mm(a, b)
            dt = (time.perf_counter() - s) / reps
            best = max(best, 2 * t * k * n / dt / 1e9)
        res[name] = best
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streamdit", default="target/release/streamdit", help="the engine's CLI binary")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (engine, then PyTorch)")
    ap.add_argument("--calls", type=int, default=20, help="timed model calls per side per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both sides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    m = TINY
    tmp = tempfile.mkdtemp(prefix="streamdit-torch-")
    wpath = os.path.join(tmp, "tiny.safetensors")
    subprocess.run([args.streamdit, "weights", "init", "--profile", "tiny", "--out", wpath], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    model = Model(read_safetensors(wpath), m)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m["F"], m["C"], m["H"], m["W"])).astype(np.float32)
    tau = (np.arange(m["F"]) / m["F"]).astype(np.float32)
    text = rng.standard_normal((m["Lt"], m["Dtxt"])).astype(np.float32)
    mask = np.ones(m["Lt"], np.float32)
    mask[20:] = 0.0
    ipath, vpath = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "v.safetensors")
    write_safetensors(ipath, {"x": x, "tau": tau, "text": text, "text_mask": mask})
    subprocess.run([args.streamdit, "forward", "--profile", "tiny", "--backend", "cpu", "--weights", wpath,
                    "--input", ipath, "--out", vpath], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    v_engine = read_safetensors(vpath)["v"]
    with torch.inference_mode():
        model.set_text(torch.from_numpy(text), torch.from_numpy(mask))
        xt, taut = torch.from_numpy(x), torch.from_numpy(tau)
        v_torch = model.forward(xt, taut).numpy()
    err = np.abs(v_torch - v_engine).max() / max(np.abs(v_engine).max(), 1e-30)
    print(f"same function: max |v_torch - v_engine| / max |v_engine| = {err:.2e} (f32 both)")
    if not err < 1e-3:
        sys.exit("the PyTorch implementation and the engine disagree: not timing different functions")

    engine_ms, torch_ms = [], []
    for r in range(args.rounds):
        jpath = os.path.join(tmp, f"bench{r}.json")
        subprocess.run([args.streamdit, "bench", "--profile", "tiny", "--backend", "cpu", "--weights", wpath,
                        "--preview", "--warmup", "3", "--steps", str(args.calls), "--json", jpath], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(jpath) as f:
            engine_ms.append(median(json.load(f)["steady"]["series"]["dit_ms"]))
        with torch.inference_mode():
            for _ in range(3):
                model.forward(xt, taut)
            times = []
            for _ in range(args.calls):
                s = time.perf_counter()
                model.forward(xt, taut)
                times.append((time.perf_counter() - s) * 1e3)
        torch_ms.append(median(times))
        print(f"round {r}: engine {engine_ms[-1]:.2f} ms, PyTorch {torch_ms[-1]:.2f} ms")
    e, t = median(engine_ms), median(torch_ms)
    d, dff, n = m["D"], m["Dff"], (m["F"] * m["H"] * m["W"]) // 4
    gemm_flops = m["L"] * 2 * n * d * (3 * d + d + d + d + 2 * dff + dff)
    shapes = [(n, d, 3 * d), (n, d, d), (n, d, 2 * dff), (n, dff, d)]
    peak = gemm_peak(args.threads, shapes)
    print(f"tiny model call, {args.threads} threads, load average {os.getloadavg()[0]:.2f}: "
          f"engine {e:.2f} ms, PyTorch {torch.__version__} {t:.2f} ms (medians of {args.rounds} rounds x "
          f"{args.calls} calls); PyTorch / engine = {t / e:.2f}x")
    print(f"sgemm peak at the model's shapes: PyTorch {peak['torch']:.1f} GFLOP/s, numpy {peak['numpy']:.1f} "
          f"GFLOP/s; the engine's whole call runs its {gemm_flops / 1e9:.2f} GFLOP of linear layers at an "
          f"average {gemm_flops / e / 1e6:.1f} GFLOP/s ({gemm_flops / e / 1e6 / max(peak.values()) * 100:.0f}% of "
          f"the best sgemm peak, counting the whole call's time)")


if __name__ == "__main__":
    main()
