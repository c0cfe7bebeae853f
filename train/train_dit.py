"""Stage 2 of issue 21: train the `tiny` DiT on the shapes world with StreamDiT's recipe.

    python train/train_dit.py --out runs/dit --tae runs/tae.safetensors \
        --engine target/release/streamdit [--minutes 60] [--seed 0]        # resumes from --out
    python train/train_dit.py --out runs/dit --tae runs/tae.safetensors \
        --engine target/release/streamdit --export tiny-shapes.safetensors

The model is `benches/torch_tiny.py`'s PyTorch implementation of ../shared/MODEL_SPEC.md
(checked there against the engine's `streamdit forward`), its weights made trainable. The
starting point is the engine's own random checkpoint of `train/tiny-shapes.toml` (`tiny`'s
DiT; `streamdit weights init`), so the tensor names, shapes and every tensor not trained (none
today) are the engine's.

Recipe (MODEL_SPEC section 5's moving buffer; the staggering and the mixed partitioning are
the StreamDiT paper's, Kodaira et al. 2025, section 3):
- data: 32 consecutive video frames of a shapes clip, encoded by the stage-1 TAE encoder into
  the buffer's 8 latent frames `x1` (computed once into `latents.pt`): `--clips` random clips
  of `shapes.sample` (512 by default), then `--covering` clips of `shapes.covering`, which
  show each of the world's captions once per round (random clips miss many captions);
  `--world` picks the world (`shapes.WORLDS`: `small`, 64 captions, by default);
- text: `tiny-shapes`' text encoder (one random ByT5 stand-in over 64 bytes, so the whole
  caption reaches the model) run by the engine (`streamdit encode`) on the clip's
  caption, once per caption (`text.pt`); 10% of samples get the empty prompt so classifier-free
  guidance has an unconditional model;
- noise levels: a chunk size `c` drawn from the divisors of the buffer (1, 2, 4, 8: the mixed
  partitioning), `N = 8 / c` chunks, one `u ~ U[0, 1)` per sample, chunk `j` (0 = oldest) at
  `tau_j = (N - 1 - j + u) / N` (the steady state of linear stage boundaries at a random
  micro-step); `--prefill-share P`: that share of samples takes the prefill's levels
  instead (MODEL_SPEC section 5, stage `k` uniform: chunks `j < N-1-k` all at
  `(k + u) / N`, the others at `(N-1-j) / N`), which the first chunks of every stream pass
  through and the steady-state levels never show;
- flow matching with MODEL_SPEC's convention (`tau = 0` noise, `tau = 1` data):
  `x = tau x1 + (1 - tau) eps`, target `v = x1 - eps`, mean squared error over the buffer;
- `--shape-weight W`: the latent pixels the shape covers (in any of their 4 video frames)
  count `1 + W` times in that mean; the shape is a few percent of the latent pixels, and
  without it the loss is met by the background (the stage-1 autoencoder showed the same);
- `--init CK`: a later phase starts from another run's DiT weights (fresh optimizer), a
  `checkpoint.pt` or an export (`train/checkpoints/` keeps one between sessions);
- AdamW, lr 3e-4 after 200 warm-up steps (`--decay A:B`: a cosine down to 3e-5 from step A to
  step B), batch `--batch` (4) by accumulation, gradient clipping at 1;
- resumable (`checkpoint.pt` every 50 steps), seeded, `loss.png` drawn as it goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402
import tae  # noqa: E402
from train_tae import draw_curve, weighted_mse  # noqa: E402


def _bench_model():
    spec = importlib.util.spec_from_file_location("torch_tiny", os.path.join(HERE, "..", "benches", "torch_tiny.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


torch_tiny = _bench_model()
M = torch_tiny.TINY
BUFFER = M["F"]
# The engine profile whose text encoders and random initial weights are used (`tiny`'s DiT,
# one ByT5 stand-in over 64 bytes: tiny's own encoders cut a caption after 8 to 12 tokens).
PROFILE = os.path.join(HERE, "tiny-shapes.toml")
NULL_PROMPT_SHARE = 0.1


def text_table(out: str, engine: str, caps: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`streamdit encode` of every caption of the data and the empty prompt, cached in `text.pt`
    (a cache missing some captions gets them added)."""
    path = os.path.join(out, "text.pt")
    table = torch.load(path, weights_only=True) if os.path.exists(path) else {}
    missing = sorted(set([""] + caps) - set(table))
    if not missing:
        return table
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "t.safetensors")
        for i, cap in enumerate(missing):
            subprocess.run([engine, "encode", "--profile", PROFILE, "--random-weights", "0", "--prompt", cap, "--out", f], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t = tae.load(f)
            table[cap] = (t["text"], t["text_mask"])
            if i % 50 == 0:
                print(f"train_dit: encoded {i + 1}/{len(missing)} prompts", flush=True)
    torch.save(table, path + ".tmp")
    os.replace(path + ".tmp", path)
    return table


def clip_list(seed: int, clips: int, covering: int) -> list[tuple[shapes.Clip, int]]:
    """The training clips and their first video frames: `clips` clips of `shapes.sample`, then
    `covering` clips of `shapes.covering` (every caption of the world once per round)."""
    out = []
    for i in range(clips + covering):
        c = shapes.sample(i, seed) if i < clips else shapes.covering(i - clips, seed)
        tag = 2 if i < clips else 3
        out.append((c, int(np.random.Generator(np.random.PCG64([seed, i, tag])).integers(0, 256))))
    return out


def latent_table(out: str, tae_path: str, clips: list[tuple[shapes.Clip, int]]) -> tuple[torch.Tensor, list[str]]:
    """`[CLIPS, 8, C, 16, 16]` buffer latents of the clips and their captions, in `latents.pt`.
    The table grows: a cache holding the first K clips gets the rest appended (saved every
    64 clips, so a stopped encoding resumes)."""
    path = os.path.join(out, "latents.pt")
    zs, caps = [], []
    if os.path.exists(path):
        s = torch.load(path, weights_only=True)
        zs, caps = list(s["latents"]), list(s["captions"])
        if caps != [c.caption for c, _ in clips[: len(caps)]]:
            raise SystemExit(f"train_dit: {path} holds other clips than --clips/--covering ask for")
    if len(zs) >= len(clips):
        return torch.stack(zs[: len(clips)]), caps[: len(clips)]
    enc = tae.Encoder()
    tae.load_into(enc, "encoder.", tae.load(tae_path))

    def save():
        torch.save({"latents": torch.stack(zs), "captions": caps}, path + ".tmp")
        os.replace(path + ".tmp", path)

    with torch.no_grad():
        for c, start in clips[len(zs):]:
            v = shapes.render(c, 4 * BUFFER, start=start)
            x = torch.from_numpy(v).permute(0, 3, 1, 2).float()[None] / 127.5 - 1
            zs.append(enc(x)[0])
            caps.append(c.caption)
            if len(zs) % 64 == 0:
                save()
                print(f"train_dit: encoded {len(zs)}/{len(clips)} clips", flush=True)
    save()
    return torch.stack(zs), caps


def shape_masks(clips: list[tuple[shapes.Clip, int]]) -> torch.Tensor:
    """`[CLIPS, 8, 1, 16, 16]`: for each latent pixel of the clips, the largest coverage of the
    shape over the 4 video frames and the 8x8 pixels it stands for (from `shapes.coverage`;
    no pixels are rendered)."""
    out = torch.empty(len(clips), BUFFER, 1, 16, 16)
    for i, (c, start) in enumerate(clips):
        cov = np.stack([shapes.coverage(c, start + t) for t in range(4 * BUFFER)])  # [32, 128, 128]
        cov = cov.reshape(BUFFER, 4, 16, 8, 16, 8).max(axis=(1, 3, 5))
        out[i, :, 0] = torch.from_numpy(cov).float()
    return out


def noise_levels(rng: np.random.Generator, prefill_share: float = 0.0) -> torch.Tensor:
    c = int(rng.choice([d for d in range(1, BUFFER + 1) if BUFFER % d == 0]))
    n, u = BUFFER // c, float(rng.random())
    if n > 1 and rng.random() < prefill_share:
        # MODEL_SPEC section 5's prefill at stage k: chunks j < n-1-k are active, all at
        # (k + u) / n; the others wait at their boundary (n-1-j) / n.
        k = int(rng.integers(0, n - 1))
        tau = [(k + u) / n if f // c < n - 1 - k else (n - 1 - f // c) / n for f in range(BUFFER)]
    else:
        tau = [(n - 1 - (f // c) + u) / n for f in range(BUFFER)]
    return torch.tensor(tau, dtype=torch.float32)


def learning_rate(step: int, decay) -> float:
    """3e-4 after a 200-step warm-up; with `--decay A:B`, a cosine from 3e-4 at step A down to
    3e-5 at step B, held after B (a last phase at a constant rate left the loss noisy)."""
    lr = 3e-4 * min(1.0, (step + 1) / 200)
    if decay is not None and step > decay[0]:
        f = min(1.0, (step - decay[0]) / max(1, decay[1] - decay[0]))
        lr = 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * f))
    return lr


def train(a) -> None:
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    clips = clip_list(a.seed, a.clips, a.covering)
    z, caps = latent_table(a.out, a.tae, clips)
    texts = text_table(a.out, a.engine, caps)
    masks = shape_masks(clips) if a.shape_weight > 0 else None
    init = os.path.join(a.out, "init.safetensors")
    if not os.path.exists(init):
        subprocess.run([a.engine, "weights", "init", "--profile", PROFILE, "--dtype", "f32", "--out", init], check=True,
                       stdout=subprocess.DEVNULL)
    weights = torch_tiny.read_safetensors(init)
    model = torch_tiny.Model({k: v for k, v in weights.items() if not k.startswith(("decoder.", "encoder."))}, M)
    params = {k: v.requires_grad_(True) for k, v in model.w.items()}
    opt = torch.optim.AdamW(params.values(), lr=3e-4, weight_decay=0.0)
    ck = os.path.join(a.out, "checkpoint.pt")
    step, history = 0, []
    if os.path.exists(ck):
        s = torch.load(ck, weights_only=True)
        with torch.no_grad():
            for k, v in s["weights"].items():
                params[k].copy_(v)
        opt.load_state_dict(s["optimizer"])
        step, history = s["step"], [tuple(h) for h in s["history"]]
        print(f"train_dit: resumed at step {step}")
    elif a.init:
        # A second phase starts from another run's DiT weights with a fresh optimizer and warm-up:
        # a `checkpoint.pt`, or an exported engine checkpoint (its DiT tensors, f16 or f32).
        if a.init.endswith(".safetensors"):
            found = tae.load(a.init)
            s = {"weights": {k: found[k].float() for k in params}, "step": "an export"}
        else:
            s = torch.load(a.init, weights_only=True)
        with torch.no_grad():
            for k, v in s["weights"].items():
                params[k].copy_(v)
        print(f"train_dit: initialised from {a.init} (step {s['step']})")

    def save():
        torch.save({"weights": {k: v.detach() for k, v in params.items()}, "optimizer": opt.state_dict(),
                    "step": step, "history": history}, ck + ".tmp")
        os.replace(ck + ".tmp", ck)
        draw_curve(os.path.join(a.out, "loss.png"), history, "DiT flow-matching loss")
        with open(os.path.join(a.out, "history.json"), "w") as f:
            json.dump({"step": step, "history": history}, f)

    t_end = time.time() + a.minutes * 60
    while time.time() < t_end and (a.max_steps is None or step < a.max_steps):
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, a.decay)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in range(a.batch):
            rng = np.random.Generator(np.random.PCG64([a.seed, step, b]))
            i = int(rng.integers(0, len(caps)))
            cap = "" if rng.random() < NULL_PROMPT_SHARE else caps[i]
            text, mask = texts[cap]
            x1 = z[i]
            eps = torch.from_numpy(rng.standard_normal(x1.shape).astype(np.float32))
            tau = noise_levels(rng, a.prefill_share)
            t = tau[:, None, None, None]
            model.set_text(text, mask)
            v = model.forward(t * x1 + (1 - t) * eps, tau)
            if masks is None:
                loss = F.mse_loss(v, x1 - eps) / a.batch
            else:
                loss = weighted_mse(v, x1 - eps, 1 + a.shape_weight * masks[i]) / a.batch
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        step += 1
        history.append((step, total))
        if step % 10 == 0:
            print(f"step {step}: loss {total:.5f}", flush=True)
        if step % 50 == 0:
            save()
    save()
    print(f"train_dit: stopped at step {step}, checkpoint {ck}")


def export(a) -> None:
    """The engine's checkpoint: the trained DiT tensors, the TAE's `encoder.*`/`decoder.*`,
    and every other tensor of the engine's random `tiny` checkpoint, in f16."""
    s = torch.load(os.path.join(a.out, "checkpoint.pt"), weights_only=True)
    base = tae.load(os.path.join(a.out, "init.safetensors"))
    out = {**base, **tae.load(a.tae), **s["weights"]}
    tae.save(a.export, out, dtype=torch.float16)
    print(f"train_dit: wrote {a.export} ({len(out)} tensors, step {s['step']})")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (caches, checkpoint, loss.png)")
    p.add_argument("--tae", required=True, help="the stage-1 export (encoder.* and decoder.*)")
    p.add_argument("--engine", default="target/release/streamdit")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=512, help="shapes clips encoded for training")
    p.add_argument("--export", help="write the engine checkpoint to this file instead of training")
    p.add_argument("--covering", type=int, default=0,
                   help="clips after --clips that show every caption of the world once per round (shapes.covering)")
    p.add_argument("--decay", type=lambda v: tuple(int(x) for x in v.split(":")), metavar="A:B",
                   help="cosine learning-rate decay from 3e-4 at step A to 3e-5 at step B")
    p.add_argument("--prefill-share", type=float, default=0.0,
                   help="share of samples at the prefill's noise levels (the first chunks' start-up)")
    p.add_argument("--init", help="a checkpoint.pt or an exported .safetensors to start from (DiT weights only) when --out has none")
    p.add_argument("--shape-weight", type=float, default=0.0,
                   help="latent pixels the shape covers count 1 + W times in the loss (0: plain MSE)")
    p.add_argument("--batch", type=int, default=4, help="samples per optimizer step (gradient accumulation)")
    p.add_argument("--world", default="small", choices=sorted(shapes.WORLDS), help="the shapes world (shapes.WORLDS)")
    a = p.parse_args(argv)
    shapes.use_world(a.world)
    if a.export:
        export(a)
    else:
        train(a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
