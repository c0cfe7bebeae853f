"""Stage 1 of issue 21: train the `tiny` temporal autoencoder (encoder and decoder) on the
shapes world, then write its `encoder.*` and `decoder.*` tensors for the engine.

    python train/train_tae.py --out runs/tae [--minutes 60] [--seed 0]   # resumes from --out
    python train/train_tae.py --out runs/tae --export tae.safetensors    # writes the tensors

Recipe (chosen here; the spec fixes only the architecture):
- clips of 8 video frames (2 latent frames), 64x64 windows of the 128x128 frames of
  `shapes.py` placed so that they hold the shape, batch 4, a fresh clip index every sample
  (the world is procedural, so no clip repeats within a run);
- loss: mean squared error of the decoder's output against the input in [-1, 1], plus
  `1e-3 * mean(z^2)` so the latents stay near zero (the DiT learns a flow to them from unit
  noise);
- AdamW, lr 2e-4 after a 200-step linear warm-up, weight decay 0;
- every 100 steps the checkpoint (model, optimizer, step, loss history) is written atomically
  and the loss curve drawn to `loss.png`; a run stopped at any point resumes where it was.
At export the per-channel standard deviation of the latents of 64 held-out clips is folded
into the encoder's last temporal convolution and the decoder's first convolution, so the
engine's latents have unit scale per channel. Scaling is exact through zero-padded
convolutions; a mean shift would not be (the padding), so the mean is left to the penalty.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402
import tae  # noqa: E402

CLIP_FRAMES = 8
CROP = 64
BATCH = 4
LATENT_PENALTY = 1e-3


def batch(step: int, seed: int, held_out: bool = False) -> torch.Tensor:
    """Clips `[B, 8, 3, 64, 64]` in [-1, 1] (64x64 windows of the 128x128 torus that hold the shape: the
    autoencoder is convolutional, and four small clips teach more per second than one big);
    held-out clips are whole 128x128 frames with indices past 2^31."""
    xs = []
    for b in range(BATCH):
        i = step * BATCH + b + (1 << 31 if held_out else 0)
        c = shapes.sample(i, seed)
        r = np.random.Generator(np.random.PCG64([seed, i, 1]))
        start = int(r.integers(0, 64))
        v = shapes.render(c, CLIP_FRAMES, start=start)
        if not held_out:
            # The window holds the shape: its centre at the clip's middle frame lands at a
            # random place in the window's middle half (a window anywhere on the torus missed
            # the shape in most samples, and plain MSE then never asked for its colour).
            cx, cy = c.centre(start + CLIP_FRAMES / 2, 128, 128)
            ox, oy = (float(a) for a in r.uniform(CROP / 4, 3 * CROP / 4, size=2))
            dx, dy = int(round(ox - cx)) % 128, int(round(oy - cy)) % 128
            v = np.roll(v, (dy, dx), axis=(1, 2))[:, :CROP, :CROP]
        xs.append(v)
    x = torch.from_numpy(np.stack(xs)).permute(0, 1, 4, 2, 3).float()
    return x / 127.5 - 1


def shape_mask(x: torch.Tensor) -> torch.Tensor:
    """`[B, T, 1, H, W]`: 1 where a pixel is the shape, i.e. farther than shapes.py's
    `MIN_CONTRAST / 2` from the clip's background (its median colour: the shape covers at
    most a third of a frame)."""
    bg = x.permute(0, 2, 1, 3, 4).flatten(2).median(dim=2).values[:, None, :, None, None]
    return ((x - bg).norm(dim=2, keepdim=True) > shapes.MIN_CONTRAST / 2 / 127.5).float()


def weighted_mse(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean squared error with each element counted `w` times (`w` broadcasts), normalised by
    the mean weight so that it stays on plain MSE's scale."""
    return ((a - b).pow(2) * w).mean() / w.mean()


def loss_of(enc, dec, x, shape_weight: float = 0.0):
    """Loss, plain reconstruction MSE, latents. With `shape_weight` w > 0 each pixel of the
    shape counts `1 + w` times in the reconstruction term: the shape is a few percent of the
    pixels, so plain MSE is met by the background and lets the shape's colour go."""
    z = enc(x)
    rec = dec(z)
    mse = F.mse_loss(rec, x)
    rec_loss = mse
    if shape_weight > 0:
        rec_loss = weighted_mse(rec, x, 1 + shape_weight * shape_mask(x))
    return rec_loss + LATENT_PENALTY * z.pow(2).mean(), mse, z


def draw_curve(path: str, history: list[tuple[int, float]], title: str = "TAE reconstruction MSE") -> None:
    """A log-scale loss curve as a PNG, drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline="black")
    if len(history) >= 2:
        steps = [s for s, _ in history]
        ls = [math.log10(max(v, 1e-8)) for _, v in history]
        lo, hi = min(ls), max(ls)
        hi = hi if hi > lo else lo + 1
        pts = [
            (pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (w - 1.5 * pad), h - pad - (l - lo) / (hi - lo) * (h - 1.5 * pad))
            for s, l in zip(steps, ls)
        ]
        d.line(pts, fill=(200, 30, 30), width=2)
        d.text((pad, 2), f"{title} (log10 {lo:.2f}..{hi:.2f}), steps {steps[0]}..{steps[-1]}", fill="black")
    img.save(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)


def train(out: str, minutes: float, seed: int, max_steps: int | None, init: str | None = None,
          shape_weight: float = 0.0) -> None:
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    enc, dec = tae.Encoder(), tae.Decoder()
    opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=2e-4, weight_decay=0.0)
    ck = os.path.join(out, "checkpoint.pt")
    step, history = 0, []
    if init and not os.path.exists(ck):
        # A second phase starts from another run's weights with a fresh optimizer and warm-up.
        s = torch.load(init, weights_only=True)
        enc.load_state_dict(s["encoder"])
        dec.load_state_dict(s["decoder"])
        print(f"train_tae: initialised from {init} (step {s['step']})")
    if os.path.exists(ck):
        s = torch.load(ck, weights_only=True)
        enc.load_state_dict(s["encoder"])
        dec.load_state_dict(s["decoder"])
        opt.load_state_dict(s["optimizer"])
        step, history = s["step"], [tuple(h) for h in s["history"]]
        print(f"train_tae: resumed at step {step}")

    def save():
        torch.save(
            {"encoder": enc.state_dict(), "decoder": dec.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history},
            ck + ".tmp",
        )
        os.replace(ck + ".tmp", ck)
        draw_curve(os.path.join(out, "loss.png"), history)
        with open(os.path.join(out, "history.json"), "w") as f:
            json.dump({"step": step, "history": history}, f)

    t_end = time.time() + minutes * 60
    while time.time() < t_end and (max_steps is None or step < max_steps):
        for g in opt.param_groups:
            g["lr"] = 2e-4 * min(1.0, (step + 1) / 200)
        loss, mse, _ = loss_of(enc, dec, batch(step, seed), shape_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(enc.parameters()) + list(dec.parameters()), 1.0)
        opt.step()
        step += 1
        history.append((step, float(mse.detach())))
        if step % 10 == 0:
            print(f"step {step}: mse {float(mse):.5f}", flush=True)
        if step % 100 == 0:
            save()
    save()
    print(f"train_tae: stopped at step {step}, checkpoint {ck}")


def colour_check(enc, dec) -> tuple[int, list[str]]:
    """How many of the world's (colour, shape, background) cases come back nearest to their own
    colour after a round trip (whole 128x128 clips, 8 frames, `shapes.measure` on the middle
    frames), and the misses. The DiT can only draw the colours this autoencoder keeps."""
    right, misses = 0, []
    with torch.no_grad():
        for bg in shapes.BACKGROUNDS:
            for colour in shapes.COLOURS:
                if shapes.colour_distance(shapes.COLOURS[colour], shapes.BACKGROUNDS[bg]) < shapes.MIN_CONTRAST:
                    continue
                for shape in shapes.SHAPES:
                    c = shapes.Clip(shape, colour, "right", bg, 64.0, 64.0, 16.0)
                    v = shapes.render(c, CLIP_FRAMES)
                    x = torch.from_numpy(v).permute(0, 3, 1, 2).float()[None] / 127.5 - 1
                    y = ((dec(enc(x))[0].clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
                    got = np.mean([shapes.measure(f, shapes.BACKGROUNDS[bg]).colour for f in y[2:6]], axis=0)
                    near = min(shapes.COLOURS, key=lambda k: shapes.colour_distance(shapes.COLOURS[k], got))
                    if near == colour:
                        right += 1
                    else:
                        misses.append(f"{colour} {shape} on {bg} -> {near} {np.round(got).astype(int).tolist()}")
    return right, misses


def export(out: str, path: str, seed: int) -> None:
    enc, dec = tae.Encoder(), tae.Decoder()
    s = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    enc.load_state_dict(s["encoder"])
    dec.load_state_dict(s["decoder"])
    with torch.no_grad():
        zs = torch.cat([enc(batch(i, seed, held_out=True)) for i in range(32)])
        std = zs.transpose(0, 2).reshape(tae.LATENT_CHANNELS, -1).std(dim=1).clamp_min(1e-3)
        # z_engine = z / std: scale the encoder's last conv; the decoder's first conv sees
        # z = std * z_engine.
        enc.conv_out_t.weight.div_(std[:, None, None])
        enc.conv_out_t.bias.div_(std)
        dec.conv_in.weight.mul_(std[None, :, None, None])
        x = batch(0, seed, held_out=True)
        mse = float(F.mse_loss(dec(enc(x)), x))
        right, misses = colour_check(enc, dec)
    print(f"train_tae: colour check {right} of {right + len(misses)} right; misses {misses}")
    tensors = {**tae.spec_names(enc, "encoder."), **tae.spec_names(dec, "decoder.")}
    tae.save(path, tensors, dtype=torch.float16)
    print(f"train_tae: wrote {path} ({len(tensors)} tensors, step {s['step']}), latent std folded {std.tolist()}, held-out mse {mse:.5f}")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (checkpoint, loss.png, history.json)")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", help="write the trained tensors to this safetensors file instead of training")
    p.add_argument("--init", help="a checkpoint.pt to start from (weights only) when --out has none")
    p.add_argument("--shape-weight", type=float, default=0.0,
                   help="extra weight of the shape's pixels in the reconstruction loss (0: plain MSE)")
    p.add_argument("--world", default="small", choices=sorted(shapes.WORLDS), help="the shapes world (shapes.WORLDS)")
    a = p.parse_args(argv)
    shapes.use_world(a.world)
    if a.export:
        export(a.out, a.export, a.seed)
    else:
        train(a.out, a.minutes, a.seed, a.max_steps, a.init, a.shape_weight)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
