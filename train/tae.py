"""The temporal autoencoder of ../shared/TAE_SPEC.md in PyTorch, for training (issue 21).

Written from the spec, not from the engine's code. Activations are `[B, T, C, H, W]`; every
2D operation runs per frame, every temporal convolution is causal with the first frame
replicated before the clip's start (the spec's stream-start rule), so a model trained on whole
clips decodes the same way the engine streams chunk by chunk.

Tensor names are the spec's (`decoder.*`, `encoder.*`), so `save()` writes a checkpoint the
engine loads. `python train/tae.py verify --engine PATH/TO/streamdit` checks this decoder
against the engine's `streamdit decode` on the same random weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LATENT_CHANNELS = 8
EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# Building blocks (TAE_SPEC "Layout and notation", "Blocks")


def per_frame(x: torch.Tensor, f) -> torch.Tensor:
    """Applies a `[N, C, H, W]` function to every frame of `x [B, T, C, H, W]`."""
    b, t = x.shape[:2]
    y = f(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


def temporal(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, stride: int, left: int) -> torch.Tensor:
    """A temporal convolution of kernel 3 at each pixel: `x [B, T, C, H, W]` padded on the left
    with `left` copies of frame 0, then `conv1d` (weight `[out, in, 3]`)."""
    b, t, c, h, wd = x.shape
    s = x.permute(0, 3, 4, 2, 1).reshape(b * h * wd, c, t)
    s = torch.cat([s[..., :1].expand(-1, -1, left), s], dim=-1)
    y = F.conv1d(s, w, bias, stride=stride)
    return y.reshape(b, h, wd, w.shape[0], -1).permute(0, 4, 3, 1, 2)


class ConvT(nn.Module):
    """Causal temporal conv: `y[t] = W0 x[t-2] + W1 x[t-1] + W2 x[t] + b`."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        # Start near the identity on the current frame: the spatial path learns first.
        with torch.no_grad():
            self.weight.normal_(0, 0.02 / math.sqrt(cin))
            if cin == cout:
                self.weight[:, :, 2] += torch.eye(cin)

    def forward(self, x):
        return temporal(x, self.weight, self.bias, stride=1, left=2)


class DownT(ConvT):
    """`y[t] = W0 x[2t-1] + W1 x[2t] + W2 x[2t+1] + b`, `x[-1] = x[0]` at the stream start."""

    def forward(self, x):
        return temporal(x, self.weight, self.bias, stride=2, left=1)


class Conv2d(nn.Conv2d):
    def __init__(self, cin, cout, k=3, stride=1, padding=1):
        super().__init__(cin, cout, k, stride=stride, padding=padding)

    def forward(self, x):
        return per_frame(x, super().forward)


class GN(nn.GroupNorm):
    def __init__(self, groups, ch):
        super().__init__(groups, ch, eps=EPS)

    def forward(self, x):
        return per_frame(x, super().forward)


class Res(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1, self.conv1, self.conv1_t = GN(groups, cin), Conv2d(cin, cout), ConvT(cout, cout)
        self.norm2, self.conv2, self.conv2_t = GN(groups, cout), Conv2d(cout, cout), ConvT(cout, cout)
        self.skip = Conv2d(cin, cout, 1, padding=0) if cin != cout else None

    def forward(self, x):
        r = self.conv1_t(self.conv1(F.silu(self.norm1(x))))
        r = self.conv2_t(self.conv2(F.silu(self.norm2(r))))
        return (self.skip(x) if self.skip is not None else x) + r


class Attn(nn.Module):
    def __init__(self, ch, groups, dh):
        super().__init__()
        self.norm = GN(groups, ch)
        self.q, self.k, self.v, self.out = (nn.Linear(ch, ch) for _ in range(4))
        self.dh = dh

    def forward(self, x):
        b, t, c, h, w = x.shape
        n = self.norm(x).permute(0, 1, 3, 4, 2).reshape(b * t, h * w, c)
        heads = lambda y: y.reshape(b * t, h * w, c // self.dh, self.dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(heads(self.q(n)), heads(self.k(n)), heads(self.v(n)))
        o = self.out(o.transpose(1, 2).reshape(b * t, h * w, c))
        return x + o.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3)


class UpS(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = Conv2d(ch, ch)

    def forward(self, x):
        return self.conv(per_frame(x, lambda f: F.interpolate(f, scale_factor=2, mode="nearest")))


class UpT(ConvT):
    def forward(self, x):
        return super().forward(x.repeat_interleave(2, dim=1))


class DownS(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(per_frame(x, lambda f: F.pad(f, (0, 1, 0, 1))))


# ----------------------------------------------------------------------------------------------
# Decoder and encoder (TAE_SPEC "Decoder", "Encoder")


class Decoder(nn.Module):
    def __init__(self, widths=(64, 64, 32, 16), groups=8):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.conv_in, self.conv_in_t = Conv2d(LATENT_CHANNELS, c0), ConvT(c0, c0)
        self.mid_res = nn.ModuleList([Res(c0, c0, groups), Res(c0, c0, groups)])
        self.mid_attn = Attn(c0, groups, min(128, c0))
        plan = [(c0, c1, 3, True, True), (c1, c1, 3, True, True), (c1, c2, 3, True, False), (c2, c3, 3, False, False)]
        self.up = nn.ModuleList()
        for cin, cout, n, s, t in plan:
            m = nn.Module()
            m.res = nn.ModuleList([Res(cin if j == 0 else cout, cout, groups) for j in range(n)])
            m.ups = UpS(cout) if s else None
            m.upt = UpT(cout, cout) if t else None
            self.up.append(m)
        self.norm_out, self.conv_out = GN(groups, c3), Conv2d(c3, 3)

    def forward(self, z):
        """`z [B, T, 8, h, w]` -> `out [B, 4T, 3, 8h, 8w]` before the RGB mapping."""
        x = self.conv_in_t(self.conv_in(z))
        x = self.mid_res[1](self.mid_attn(self.mid_res[0](x)))
        for m in self.up:
            for r in m.res:
                x = r(x)
            if m.ups is not None:
                x = m.ups(x)
            if m.upt is not None:
                x = m.upt(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Encoder(nn.Module):
    def __init__(self, widths=(64, 64, 32, 16), groups=8):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.conv_in = Conv2d(3, c3)
        plan = [(c3, c3, True, False), (c3, c2, True, True), (c2, c1, True, True), (c1, c0, False, False)]
        self.down = nn.ModuleList()
        for cin, cout, s, t in plan:
            m = nn.Module()
            m.res = nn.ModuleList([Res(cin, cout, groups), Res(cout, cout, groups)])
            m.downs = DownS(cout) if s else None
            m.downt = DownT(cout, cout) if t else None
            self.down.append(m)
        self.mid_res = nn.ModuleList([Res(c0, c0, groups), Res(c0, c0, groups)])
        self.mid_attn = Attn(c0, groups, min(128, c0))
        self.norm_out, self.conv_out = GN(groups, c0), Conv2d(c0, LATENT_CHANNELS)
        self.conv_out_t = ConvT(LATENT_CHANNELS, LATENT_CHANNELS)

    def forward(self, x):
        """`x [B, 4T, 3, H, W]` in [-1, 1] -> `z [B, T, 8, H/8, W/8]`."""
        x = self.conv_in(x)
        for m in self.down:
            for r in m.res:
                x = r(x)
            if m.downs is not None:
                x = m.downs(x)
            if m.downt is not None:
                x = m.downt(x)
        x = self.mid_res[1](self.mid_attn(self.mid_res[0](x)))
        return self.conv_out_t(self.conv_out(F.silu(self.norm_out(x))))


def to_rgb(out: torch.Tensor) -> torch.Tensor:
    """The spec's output mapping, before rounding: `clamp((out + 1) / 2, 0, 1) * 255`."""
    return ((out + 1) / 2).clamp(0, 1) * 255


# ----------------------------------------------------------------------------------------------
# Names: module parameters <-> the spec's tensor names


def spec_names(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The module's parameters under the spec's names (`mid_res.0` -> `mid.res.0`, Conv2d
    wrappers flattened, Linear weights `[out, in]` as the spec's `[ch, ch]`)."""
    out = {}
    for name, p in module.named_parameters():
        n = name.replace("mid_res.", "mid.res.").replace("mid_attn.", "mid.attn.")
        n = n.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
        out[prefix + n] = p
    return out


# ----------------------------------------------------------------------------------------------
# safetensors, minimal (f32/f16 only), so the training venv needs nothing beyond torch


def save(path: str, tensors: dict[str, torch.Tensor], dtype=torch.float16) -> None:
    header, blobs, off = {}, [], 0
    code = {torch.float16: "F16", torch.float32: "F32"}[dtype]
    for k in sorted(tensors):
        b = tensors[k].detach().to(dtype).contiguous().numpy().tobytes()
        header[k] = {"dtype": code, "shape": list(tensors[k].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F16": np.float16, "F32": np.float32, "BF16": None}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            raw = np.frombuffer(data[a:b], np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dt[v["dtype"]]).astype(np.float32)
        out[k] = torch.from_numpy(arr.reshape(v["shape"]).copy())
    return out


def load_into(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    names = spec_names(module, prefix)
    missing = [k for k in names if k not in tensors]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for k, p in names.items():
            if tuple(tensors[k].shape) != tuple(p.shape):
                raise ValueError(f"{k}: expected shape {tuple(p.shape)}, found {tuple(tensors[k].shape)}")
            p.copy_(tensors[k])


# ----------------------------------------------------------------------------------------------
# verify: this decoder against the engine's `streamdit decode`


def verify(engine: str, weights: str | None) -> None:
    """Decodes the same random latents with this decoder and the engine's; `weights` is a
    checkpoint with `decoder.*` tensors (e.g. an exported training run), else the engine's
    random `tiny` weights."""
    with tempfile.TemporaryDirectory() as d:
        ck = weights or os.path.join(d, "w.safetensors")
        if weights is None:
            subprocess.run([engine, "weights", "init", "--profile", "tiny", "--dtype", "f32", "--out", ck], check=True)
        dec = Decoder()
        load_into(dec, "decoder.", load(ck))
        g = torch.Generator().manual_seed(1)
        z = torch.randn(1, 4, LATENT_CHANNELS, 16, 16, generator=g)
        lat = os.path.join(d, "z.safetensors")
        save(lat, {"latents": z[0]}, dtype=torch.float32)
        raw = subprocess.run(
            [engine, "decode", "--profile", "tiny", "--weights", ck, "--latents", lat, "--chunk", "2", "--out", "-"],
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
        got = np.frombuffer(raw, np.uint8).reshape(16, 128, 128, 3).astype(np.float64)
        with torch.no_grad():
            want = to_rgb(dec(z))[0].permute(0, 2, 3, 1).double().numpy()
    diff = np.abs(got - want)
    # The engine rounds to 8 bits; f32 rounding moves values by far less than one level,
    # so every pixel must be within 0.5 + 0.05 of the unrounded reference.
    print(f"tae.py verify: max |engine - torch| = {diff.max():.3f} (8-bit levels), mean {diff.mean():.4f}")
    if diff.max() > 0.55:
        raise SystemExit("tae.py verify: the decoder disagrees with the engine")
    print("tae.py verify: decoder matches the engine")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--engine", default="target/release/streamdit")
    v.add_argument("--weights", help="a checkpoint with decoder.* tensors (default: random tiny weights)")
    a = p.parse_args(argv)
    if a.cmd == "verify":
        verify(a.engine, a.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
