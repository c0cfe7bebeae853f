"""The synthetic world of issue 21: clips of one coloured shape moving over a plain background.

Everything here is procedural and deterministic: clip `i` of seed `s` is the same on every
machine (numpy's PCG64 seeded with `[s, i]`), so training is reproducible without any data
download. A clip is described by a caption built from its attributes, e.g.
"a red ball moving left on a blue background".

The world is a torus: a shape leaving one edge enters from the opposite one, so a stream can
run forever and every frame holds the whole shape's area. Shapes are drawn anti-aliased from a
signed distance (coverage = clamp(0.5 - d, 0, 1) per pixel centre).

Usage (run by hand, never by the default tests):
    python train/shapes.py [--world small|full] check                    # self-checks
    python train/shapes.py [--world small|full] preview --out DIR [--n 8] # PNG strips
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import numpy as np

# Colours of the shapes and backgrounds (8-bit sRGB). Names are the words the captions use.
FULL_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "purple": (160, 60, 210),
    "orange": (250, 140, 30),
    "cyan": (40, 210, 220),
}
FULL_BACKGROUNDS = {
    "black": (12, 12, 12),
    "blue": (25, 40, 120),
    "green": (25, 95, 40),
    "gray": (110, 110, 110),
    "white": (235, 235, 235),
    "brown": (100, 65, 35),
}
FULL_SHAPES = ("ball", "square", "ring", "triangle")
# Unit direction of each motion word in image coordinates (x right, y down).
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# The worlds. `full` has 704 captions; on 2 CPU cores its DiT needed about 19,000 steps (3
# hours) and still mixed up the colours (train/README.md, run 4). `small` keeps four
# well-separated colours, two shapes and two backgrounds: 64 captions, the world the shipped
# `tiny-shapes` model is trained on.
WORLDS = {
    "full": (FULL_COLOURS, FULL_BACKGROUNDS, FULL_SHAPES),
    "small": (
        {k: FULL_COLOURS[k] for k in ("red", "green", "blue", "yellow")},
        {k: FULL_BACKGROUNDS[k] for k in ("black", "white")},
        ("ball", "square"),
    ),
}
COLOURS, BACKGROUNDS, SHAPES = WORLDS["small"]
WORLD = "small"


def use_world(name: str) -> None:
    """Makes `name` ("small" or "full") the world every function here draws from."""
    global COLOURS, BACKGROUNDS, SHAPES, WORLD
    if name not in WORLDS:
        raise SystemExit(f"shapes: unknown world {name!r}; expected one of {sorted(WORLDS)}")
    COLOURS, BACKGROUNDS, SHAPES = WORLDS[name]
    WORLD = name

# Pixels per video frame. The tiny profile's buffer holds 32 video frames, so a shape moves
# 96 px (three quarters of the 128 px frame) across one buffer: easy to see, and the
# temporal autoencoder's 4-frame groups move 12 px, well inside its receptive field.
SPEED = 3.0


def colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


# A shape colour must stand out from its background by at least this (Euclidean, 8-bit RGB),
# so the shape region can be found from the frames alone.
MIN_CONTRAST = 120.0


@dataclasses.dataclass(frozen=True)
class Clip:
    shape: str
    colour: str
    motion: str
    background: str
    # Shape centre at video frame 0 (pixels) and size (radius / half-side, pixels).
    x0: float
    y0: float
    size: float

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.motion} on a {self.background} background"

    def centre(self, t: float, width: int, height: int) -> tuple[float, float]:
        dx, dy = MOTIONS[self.motion]
        return ((self.x0 + dx * SPEED * t) % width, (self.y0 + dy * SPEED * t) % height)


def sample(index: int, seed: int = 0, width: int = 128, height: int = 128) -> Clip:
    """Clip `index` of the world with seed `seed`."""
    rng = np.random.Generator(np.random.PCG64([seed, index]))
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    colours = [
        c for c in COLOURS if colour_distance(COLOURS[c], BACKGROUNDS[background]) >= MIN_CONTRAST
    ]
    colour = colours[rng.integers(len(colours))]
    return Clip(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=colour,
        motion=list(MOTIONS)[rng.integers(len(MOTIONS))],
        background=background,
        x0=float(rng.uniform(0, width)),
        y0=float(rng.uniform(0, height)),
        size=float(rng.uniform(12.0, 20.0)),
    )


def captions() -> list[tuple[str, str, str, str]]:
    """Every (shape, colour, motion, background) of the world, in a fixed order (a colour is
    only drawn where it stands out): 704 in the full world, 64 in the small one."""
    return [
        (shape, colour, motion, background)
        for background in BACKGROUNDS
        for colour in COLOURS
        if colour_distance(COLOURS[colour], BACKGROUNDS[background]) >= MIN_CONTRAST
        for shape in SHAPES
        for motion in MOTIONS
    ]


def covering(index: int, seed: int = 0, width: int = 128, height: int = 128) -> Clip:
    """Clip `index` of a sequence that shows every caption once per `len(captions())` clips
    (the attributes of `captions()[index % len(captions())]`, a random place and size): a
    training set that holds every caption (in the full world `sample`'s 512 clips hold about
    half of its 704)."""
    shape, colour, motion, background = captions()[index % len(captions())]
    rng = np.random.Generator(np.random.PCG64([seed, index, 7]))
    return Clip(shape=shape, colour=colour, motion=motion, background=background,
                x0=float(rng.uniform(0, width)), y0=float(rng.uniform(0, height)),
                size=float(rng.uniform(12.0, 20.0)))


def _distance(shape: str, px: np.ndarray, py: np.ndarray, size: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of points relative to the shape centre."""
    if shape == "ball":
        return np.hypot(px, py) - size
    if shape == "ring":
        # An annulus of width size/2 whose outer radius is `size`.
        return np.abs(np.hypot(px, py) - 0.75 * size) - 0.25 * size
    if shape == "square":
        qx, qy = np.abs(px) - size, np.abs(py) - size
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":
        # Upward equilateral triangle inscribed in a circle of radius `size` (a standard
        # signed-distance formula for a convex polygon: the largest edge-plane distance, which
        # is exact inside and a lower bound outside; enough for a one-pixel anti-aliased edge).
        d = None
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3 + math.pi  # outward normals
            nx, ny = math.cos(a), -math.sin(a)
            e = px * nx + py * ny - 0.5 * size
            d = e if d is None else np.maximum(d, e)
        return d
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def coverage(clip: Clip, t: float, width: int = 128, height: int = 128) -> np.ndarray:
    """Anti-aliased coverage `[H, W]` in [0, 1] of the shape at video frame `t`."""
    cx, cy = clip.centre(t, width, height)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    # Torus: the nearest copy of the centre along each axis.
    px = (xs - cx + width / 2) % width - width / 2
    py = (ys - cy + height / 2) % height - height / 2
    return np.clip(0.5 - _distance(clip.shape, px, py, clip.size), 0.0, 1.0)


def render(clip: Clip, frames: int, start: int = 0, width: int = 128, height: int = 128) -> np.ndarray:
    """Video frames `[frames, H, W, 3]` (uint8) from video frame `start` on."""
    fg = np.asarray(COLOURS[clip.colour], np.float64)
    bg = np.asarray(BACKGROUNDS[clip.background], np.float64)
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        a = coverage(clip, start + i, width, height)[..., None]
        out[i] = np.rint(bg + a * (fg - bg)).astype(np.uint8)
    return out


@dataclasses.dataclass
class Measure:
    """What a frame shows: the shape region's mean colour and its centroid (pixels)."""

    colour: np.ndarray
    centroid: tuple[float, float]
    area: int


def measure(frame: np.ndarray, background) -> Measure:
    """Finds the pixels far from the background colour and measures them; the centroid is a
    circular mean, so a shape split by the torus edge has one centre."""
    f = frame.astype(np.float64)
    far = np.linalg.norm(f - np.asarray(background, np.float64), axis=-1) > MIN_CONTRAST / 2
    h, w = far.shape
    ys, xs = np.nonzero(far)
    if len(xs) == 0:
        return Measure(np.zeros(3), (float("nan"), float("nan")), 0)

    def circ(v, n):
        a = 2 * math.pi * (v + 0.5) / n
        m = math.atan2(np.sin(a).mean(), np.cos(a).mean())
        return (m / (2 * math.pi) * n - 0.5) % n

    return Measure(f[far].mean(axis=0), (circ(xs, w), circ(ys, h)), int(len(xs)))


def wrapped_step(a: float, b: float, n: int) -> float:
    """The signed shortest displacement from a to b on a circle of length n."""
    return (b - a + n / 2) % n - n / 2


def check() -> None:
    """Self-checks: determinism, captions, contrast, colour and motion measured back."""
    a, b = sample(7, seed=3), sample(7, seed=3)
    assert a == b, "sample() must be deterministic"
    assert sample(8, seed=3) != a or sample(9, seed=3) != a, "clips must vary"
    seen = set()
    for i in range(400):
        c = sample(i)
        seen.add((c.shape, c.colour, c.motion, c.background))
        assert colour_distance(COLOURS[c.colour], BACKGROUNDS[c.background]) >= MIN_CONTRAST
        assert c.caption.startswith(f"a {c.colour} {c.shape} moving {c.motion}")
    want = min(150, len(captions()) * 3 // 4)
    assert len(seen) > want, f"only {len(seen)} attribute combinations in 400 clips"
    assert len(set(captions())) == len(captions())
    for i in range(24):
        c = sample(i)
        v = render(c, 8)
        assert np.array_equal(v, render(c, 8)), "render() must be deterministic"
        assert np.array_equal(v[4:], render(c, 4, start=4)), "a later start continues the clip"
        ms = [measure(fr, BACKGROUNDS[c.background]) for fr in v]
        fg = np.asarray(COLOURS[c.colour], np.float64)
        for m in ms:
            assert m.area > 50, (c, m.area)
            # Edge pixels blend with the background; the mean stays near the shape colour.
            assert np.linalg.norm(m.colour - fg) < 40, (c.caption, m.colour)
        dx, dy = MOTIONS[c.motion]
        for m0, m1 in zip(ms, ms[1:]):
            sx = wrapped_step(m0.centroid[0], m1.centroid[0], 128)
            sy = wrapped_step(m0.centroid[1], m1.centroid[1], 128)
            assert abs(sx - dx * SPEED) < 0.75 and abs(sy - dy * SPEED) < 0.75, (c.caption, sx, sy)
    print("shapes.py: all checks passed")


def preview(out: str, n: int) -> None:
    from PIL import Image  # only the preview needs Pillow

    os.makedirs(out, exist_ok=True)
    for i in range(n):
        c = sample(i)
        strip = np.concatenate(list(render(c, 8, start=0)[::2]), axis=1)
        Image.fromarray(strip).save(os.path.join(out, f"clip{i:03d}.png"))
        print(f"clip{i:03d}.png: {c.caption}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="small", choices=sorted(WORLDS))
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check")
    pv = sub.add_parser("preview")
    pv.add_argument("--out", required=True)
    pv.add_argument("--n", type=int, default=8)
    a = p.parse_args(argv)
    use_world(a.world)
    if a.cmd == "check":
        check()
    else:
        preview(a.out, a.n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
