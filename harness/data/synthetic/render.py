"""The renderer behind every synthetic layout: persons, cameras and shots drawn with exact cues.

Each identity draws an outfit from its own RNG out of small shared palettes (upper colour + pattern,
sleeves, lower garment colour/length, shoes, skin, hair colour/length, bag/backpack/hat), so persons
share attributes and no single colour identifies them. Each camera has its own illumination (gain,
colour cast), background (wall texture, poles, ground line), preferred viewpoint (front/back/side)
and sharpness; each image adds scale/offset/pose jitter, noise and occasional occlusion. The
renderer labels every pixel with a body part, so its cue maps (parsing, DensePose, mask, keypoints,
saliency) are exact. All randomness comes from ``numpy.random.default_rng((seed, stream, ...))``,
so output is byte-identical per seed. `Scene` is what a layout writer uses: a seeded set of cameras
that renders a person's images; `save` writes an image and its cues (each registered cue's
exact map, harness/data/cues.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from harness.data.cues import write_cues

HEIGHT, WIDTH = 128, 64
# LIP labels (Gong et al., CVPR 2017) that the renderer paints; carried objects are not a LIP class.
_BG, _HAT, _HAIR, _UPPER, _PANTS, _SKIRT, _FACE = 0, 1, 2, 5, 9, 12, 13
_ARM, _LEG, _SHOE = (14, 15), (16, 17), (18, 19)  # (left, right) of the person
# DensePose parts (Guler et al., CVPR 2018), as (left, right) pairs, front then back where both exist.
_DP_TORSO = (2, 1)  # front, back
_DP_HAND, _DP_FOOT = (4, 3), (5, 6)
_DP_UPPER_LEG, _DP_LOWER_LEG = ((10, 9), (8, 7)), ((14, 13), (12, 11))
_DP_UPPER_ARM, _DP_LOWER_ARM = ((15, 16), (17, 18)), ((19, 20), (21, 22))
_DP_HEAD = (24, 23)
_CLOTHES = (
    (22, 22, 24),
    (232, 232, 226),
    (128, 128, 128),
    (32, 42, 92),
    (52, 92, 178),
    (178, 32, 36),
    (42, 118, 62),
    (188, 168, 118),
    (110, 72, 42),
    (218, 188, 42),
    (218, 132, 160),
    (110, 62, 138),
    (228, 120, 32),
    (72, 160, 170),
)
_LOWER_COLOURS = tuple(_CLOTHES[i] for i in (0, 1, 2, 3, 4, 7, 8))
_SHOE_COLOURS = ((16, 16, 16), (238, 238, 238), (100, 62, 32), (120, 120, 120), (168, 32, 32))
_SKIN_TONES = ((248, 214, 186), (224, 180, 142), (190, 140, 102), (140, 96, 66), (96, 66, 46))
_HAIR_COLOURS = ((16, 12, 10), (62, 40, 26), (122, 82, 42), (210, 180, 112), (164, 164, 164))
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Person:
    """One identity's fixed appearance; everything a camera could see of them."""

    upper: np.ndarray
    upper2: np.ndarray
    pattern: str
    period: int
    long_sleeves: bool
    lower: np.ndarray
    lower_kind: str
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    carry: str
    carry_colour: np.ndarray
    carry_side: int
    build: float
    height: float


@dataclass(frozen=True)
class Camera:
    """Scene and sensor of one camera: what stays constant across the persons it sees."""

    wall: np.ndarray
    ground: np.ndarray
    ground_y: float
    texture: str
    poles: tuple[float, ...]
    pole_colour: np.ndarray
    gain: float
    cast: np.ndarray
    view_p: np.ndarray
    soft: bool
    noise: float


@dataclass(frozen=True)
class Shot:
    """Per-image framing and pose, so no two images of a person are pixel-equal."""

    view: str
    facing: int
    scale: float
    dx: float
    dy: float
    spread: float
    swing: float


def _pick(rng: np.random.Generator, palette: tuple, tint: float = 10.0) -> np.ndarray:
    """Shared palette entry plus a small personal tint: many persons share a colour, few match it exactly."""
    colour = np.array(palette[rng.integers(len(palette))], np.float32)
    return np.clip(colour + rng.normal(0.0, tint, 3), 0, 255).astype(np.float32)


def make_person(rng: np.random.Generator) -> Person:
    """Draw an outfit; attributes are independent, so combinations (not single colours) identify people."""
    return Person(
        upper=_pick(rng, _CLOTHES),
        upper2=_pick(rng, _CLOTHES),
        pattern=("plain", "hstripes", "vstripes", "checks", "logo")[rng.integers(5)],
        period=int(rng.integers(3, 7)),
        long_sleeves=bool(rng.random() < 0.5),
        lower=_pick(rng, _LOWER_COLOURS),
        lower_kind=("trousers", "trousers", "shorts", "skirt")[rng.integers(4)],
        shoes=_pick(rng, _SHOE_COLOURS),
        skin=_pick(rng, _SKIN_TONES, 5.0),
        hair=_pick(rng, _HAIR_COLOURS),
        long_hair=bool(rng.random() < 0.35),
        carry=("none", "none", "bag", "backpack", "hat")[rng.integers(5)],
        carry_colour=_pick(rng, _CLOTHES),
        carry_side=int(rng.choice((-1, 1))),
        build=float(rng.uniform(0.85, 1.15)),
        height=float(rng.uniform(0.9, 1.04)),
    )


def _muted(rng: np.random.Generator, low: float, high: float, tint: float) -> np.ndarray:
    """Greyish scene colour with a slight tint: real backgrounds are dull, so the person dominates the crop."""
    return np.clip(rng.uniform(low, high) + rng.normal(0, tint, 3), 0, 255).astype(np.float32)


def make_camera(rng: np.random.Generator) -> Camera:
    """Draw a camera whose scene and colour response differ from the others (the cross-camera gap)."""
    view_p = np.full(3, 0.15)
    view_p[rng.integers(3)] = 0.7
    return Camera(
        wall=_muted(rng, 70, 190, 16),
        ground=_muted(rng, 50, 150, 10),
        ground_y=float(rng.uniform(0.8, 0.95)),
        texture=("flat", "tiles", "blotch")[rng.integers(3)],
        poles=tuple(float(x) for x in rng.uniform(0, WIDTH, rng.integers(0, 3))),
        pole_colour=_muted(rng, 30, 200, 20),
        gain=float(rng.uniform(0.75, 1.25)),
        cast=np.clip(1 + rng.normal(0, 0.08, 3), 0.8, 1.2).astype(np.float32),
        view_p=view_p,
        soft=bool(rng.random() < 0.33),
        noise=float(rng.uniform(2, 7)),
    )


def make_shot(
    rng: np.random.Generator, view: str, facing: int, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0
) -> Shot:
    """Jitter framing and pose around a tracklet's viewpoint, like successive detector boxes."""
    return Shot(
        view,
        facing,
        scale * rng.uniform(0.84, 1.02),
        dx + rng.uniform(-4, 4),
        dy + rng.uniform(-4, 4),
        rng.uniform(0, 1),
        rng.uniform(-1, 1),
    )


@dataclass(frozen=True)
class _Body:
    """Pixel geometry of one figure in one shot, shared by the part painters."""

    top: float
    tall: float
    cx: float
    half: float
    r_arm: float
    side: bool
    facing: int

    def y(self, frac: float) -> float:
        return self.top + frac * self.tall


@dataclass(frozen=True)
class _Canvas:
    """Image, labels and pixel grid drawn together, so every painted pixel records what it shows:
    its LIP label (`lab`), its DensePose part (`dp`) and whether it is the person (`fg`)."""

    img: np.ndarray
    lab: np.ndarray
    dp: np.ndarray
    fg: np.ndarray
    yy: np.ndarray
    xx: np.ndarray

    def paint(
        self,
        mask: np.ndarray,
        colour: np.ndarray,
        lip: int,
        dp: int = 0,
        split: tuple[float, int] | None = None,
        fg: bool = True,
    ) -> None:
        """`split` = (y, part): pixels below y get DensePose part `part` instead (a limb's lower half)."""
        self.img[mask] = colour
        self.lab[mask] = lip
        self.dp[mask] = dp
        if split is not None:
            self.dp[mask & (self.yy >= split[0])] = split[1]
        self.fg[mask] = fg

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((self.yy - cy) / ry) ** 2 + ((self.xx - cx) / rx) ** 2 <= 1

    def rect(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= min(x0, x1)) & (self.xx < max(x0, x1))

    def capsule(self, p0: tuple[float, float], p1: tuple[float, float], r: float) -> np.ndarray:
        """Thick segment: limbs that bend with the pose."""
        vy, vx = p1[0] - p0[0], p1[1] - p0[1]
        t = np.clip(((self.yy - p0[0]) * vy + (self.xx - p0[1]) * vx) / max(vy * vy + vx * vx, 1e-6), 0, 1)
        return (self.yy - p0[0] - t * vy) ** 2 + (self.xx - p0[1] - t * vx) ** 2 <= r * r


def _lr(s: Shot, k: int) -> int:
    """0 for the person's left, 1 for the right, of the limb drawn at image side k (-1 left, +1 right)."""
    if s.view == "side":
        return int(k > 0)
    return int(k < 0) if s.view == "front" else int(k > 0)


def _body(p: Person, s: Shot) -> _Body:
    full = 112 * s.scale
    tall = full * p.height
    side = s.view == "side"
    return _Body(
        top=(HEIGHT - full) / 2 + (full - tall) + s.dy,  # feet stay on the ground whatever the height
        tall=tall,
        cx=WIDTH / 2 + s.dx,
        half=0.115 * tall * p.build * (0.6 if side else 1.0),
        r_arm=0.032 * tall * p.build,
        side=side,
        facing=s.facing,
    )


def _draw_person(cv: _Canvas, p: Person, s: Shot) -> _Body:
    """Paint a person back to front; each painter labels its pixels."""
    b = _body(p, s)
    if p.carry == "backpack" and b.side:  # behind the torso, sticking out of the back
        x0 = b.cx - b.facing * b.half * 0.6
        pack = cv.rect(b.y(0.17), b.y(0.42), x0, x0 - b.facing * (0.4 * b.half + 0.09 * b.tall))
        cv.paint(pack, p.carry_colour, _BG)
    _draw_legs(cv, p, s, b)
    _draw_upper(cv, p, s, b)
    _draw_carried(cv, p, s, b)
    _draw_head(cv, p, s, b)
    return b


def _draw_legs(cv: _Canvas, p: Person, s: Shot, b: _Body) -> None:
    """Legs (skin below the hem), shoes, and a skirt's flare; the stride shows in side view."""
    r_leg = 0.045 * b.tall * p.build
    hips, feet = _legs(s, b)
    hem = {"trousers": 0.93, "shorts": 0.64, "skirt": 0.7}[p.lower_kind]
    garment, back = (_SKIRT if p.lower_kind == "skirt" else _PANTS), int(s.view == "back")
    for k, hip, foot in zip((-1, 1), hips, feet):
        lr = _lr(s, k)
        leg = cv.capsule(hip, (b.y(0.93), foot), r_leg)
        dp = dict(dp=_DP_UPPER_LEG[back][lr], split=(b.y(0.715), _DP_LOWER_LEG[back][lr]))
        cv.paint(leg, p.skin, _LEG[lr], **dp)
        cv.paint(leg & (cv.yy < b.y(hem)), p.lower, garment, **dp)
        toe = foot + (b.facing * 0.03 * b.tall if b.side else 0)
        cv.paint(cv.ellipse(b.y(0.95), toe, 0.026 * b.tall, 0.055 * b.tall), p.shoes, _SHOE[lr], _DP_FOOT[lr])
    for k in (-1, 1):  # the hips, split at the body's centre line
        half = cv.rect(b.y(0.46), b.y(0.56), b.cx, b.cx + k * b.half * 0.95)
        cv.paint(half, p.lower, garment, _DP_UPPER_LEG[back][_lr(s, k)])
    if p.lower_kind == "skirt":
        flare = b.half * (0.95 + 0.7 * np.clip((cv.yy - b.y(0.48)) / (0.22 * b.tall), 0, 1))
        for k in (-1, 1):
            cv.paint(
                cv.rect(b.y(0.48), b.y(0.7), b.cx, b.cx + k * 1e3) & (np.abs(cv.xx - b.cx) < flare),
                p.lower,
                _SKIRT,
                _DP_UPPER_LEG[back][_lr(s, k)],
            )


def _legs(s: Shot, b: _Body) -> tuple[list[tuple[float, float]], list[float]]:
    """Hip points (y, x) and foot x positions of the legs at image sides -1 and +1."""
    spread = s.spread * 0.1 * b.tall
    hips = [(b.y(0.5), b.cx)] * 2 if b.side else [(b.y(0.5), b.cx + k * 0.5 * b.half) for k in (-1, 1)]
    feet = [b.cx - spread, b.cx + spread] if b.side else [b.cx + k * (0.5 * b.half + 0.4 * spread) for k in (-1, 1)]
    return hips, feet


def _keypoints(s: Shot, b: _Body, fg: np.ndarray) -> np.ndarray:
    """The 13 keypoints (x, y, score) in GASM's order; score 1 where the person is seen there, else 0."""
    points = np.zeros((13, 2), np.float32)
    known = np.zeros(13, bool)
    points[0], known[0] = (b.cx + (b.facing * 0.015 * b.tall if b.side else 0), b.y(0.085)), True
    for k, shoulder, hand in _arms(s, b):
        lr = _lr(s, k)
        for joint, (y, x) in enumerate((shoulder, ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2), hand)):
            points[1 + 2 * joint + lr], known[1 + 2 * joint + lr] = (x, y), True
    hips, feet = _legs(s, b)
    for k, (hy, hx), foot in zip((-1, 1), hips, feet):
        lr = _lr(s, k)
        ankle = (foot, b.y(0.93))
        for joint, point in enumerate(((hx, hy), ((hx + ankle[0]) / 2, (hy + ankle[1]) / 2), ankle)):
            points[7 + 2 * joint + lr], known[7 + 2 * joint + lr] = point, True
    seen = np.zeros(13, np.float32)
    for i, (x, y) in enumerate(points):
        xi, yi = int(np.floor(x)), int(np.floor(y))
        if known[i] and 0 <= xi < WIDTH and 0 <= yi < HEIGHT:
            seen[i] = float(fg[max(yi - 1, 0) : yi + 2, max(xi - 1, 0) : xi + 2].any())
    return np.concatenate([points * known[:, None], seen[:, None]], axis=1)


def _iuv(dp: np.ndarray) -> np.ndarray:
    """A DensePose-like IUV image: per part, U runs down and V across the part's extent, 0..255."""
    out = np.zeros((*dp.shape, 3), np.uint8)
    out[..., 0] = dp
    for part in np.unique(dp[dp > 0]):
        ys, xs = np.nonzero(dp == part)
        out[ys, xs, 1] = np.minimum(255, (ys - ys.min()) * 256 // (ys.max() - ys.min() + 1))
        out[ys, xs, 2] = np.minimum(255, (xs - xs.min()) * 256 // (xs.max() - xs.min() + 1))
    return out


def _draw_upper(cv: _Canvas, p: Person, s: Shot, b: _Body) -> None:
    """Tapered torso with its pattern, and arms whose sleeves end at the elbow or the wrist."""
    taper = b.half * (1 - 0.12 * np.clip((cv.yy - b.y(0.16)) / (0.36 * b.tall), 0, 1))
    torso = (cv.yy >= b.y(0.16)) & (cv.yy < b.y(0.52)) & (np.abs(cv.xx - b.cx) < taper)
    back = int(s.view == "back")
    cv.paint(torso, p.upper, _UPPER, _DP_TORSO[back])
    cv.paint(torso & _pattern(cv, p, s.view, b), p.upper2, _UPPER, _DP_TORSO[back])
    for k, shoulder, hand in _arms(s, b):
        lr = _lr(s, k)
        arm = cv.capsule(shoulder, hand, b.r_arm)
        dp = dict(dp=_DP_UPPER_ARM[back][lr], split=((shoulder[0] + hand[0]) / 2, _DP_LOWER_ARM[back][lr]))
        cv.paint(arm, p.skin, _ARM[lr], **dp)
        cv.paint(arm & (cv.yy < b.y(0.45 if p.long_sleeves else 0.28)), p.upper, _UPPER, **dp)


def _arms(s: Shot, b: _Body) -> list[tuple[int, tuple[float, float], tuple[float, float]]]:
    """(image side, shoulder, hand) of each visible arm; in side view only the near one shows."""
    if b.side:
        return [(b.facing, (b.y(0.18), b.cx), (b.y(0.48), b.cx + b.facing * s.swing * 0.12 * b.tall))]
    reach = b.half + b.r_arm + abs(s.swing) * 0.05 * b.tall
    return [(k, (b.y(0.18), b.cx + k * (b.half + b.r_arm * 0.6)), (b.y(0.5), b.cx + k * reach)) for k in (-1, 1)]


def _pattern(cv: _Canvas, p: Person, view: str, b: _Body) -> np.ndarray:
    """Pixels of the shirt's second colour; a chest logo only shows from the front."""
    dy, dx, per = cv.yy - b.y(0.16), cv.xx - b.cx, p.period
    if p.pattern == "hstripes":
        return dy // per % 2 == 1
    if p.pattern == "vstripes":
        return dx // per % 2 == 1
    if p.pattern == "checks":
        return (dy // per + dx // per) % 2 == 1
    if p.pattern == "logo" and view == "front":
        return cv.rect(b.y(0.22), b.y(0.31), b.cx - 0.045 * b.tall, b.cx + 0.045 * b.tall)
    return np.zeros_like(cv.yy, bool)


def _draw_carried(cv: _Canvas, p: Person, s: Shot, b: _Body) -> None:
    """A shoulder bag at one side (mirrored from the back), or a backpack's straps (front) or body (back)."""
    if p.carry == "bag":
        x = -p.carry_side if s.view == "back" else p.carry_side
        bx = b.cx + (b.facing * 0.3 * b.half if b.side else x * (b.half + 2 * b.r_arm))
        cv.paint(cv.rect(b.y(0.4), b.y(0.55), bx, bx + (1 if b.side else x) * 0.1 * b.tall), p.carry_colour, _BG)
        if not b.side:
            cv.paint(cv.capsule((b.y(0.17), b.cx - x * b.half * 0.7), (b.y(0.41), bx), 0.7), p.carry_colour * 0.7, _BG)
    elif p.carry == "backpack" and s.view == "back":
        cv.paint(cv.rect(b.y(0.18), b.y(0.42), b.cx - b.half * 0.8, b.cx + b.half * 0.8), p.carry_colour, _BG)
    elif p.carry == "backpack" and s.view == "front":
        for k in (-1, 1):
            strap = cv.rect(b.y(0.16), b.y(0.36), b.cx + k * b.half * 0.55, b.cx + k * b.half * 0.75)
            cv.paint(strap, p.carry_colour, _BG)


def _draw_head(cv: _Canvas, p: Person, s: Shot, b: _Body) -> None:
    """Face, hair (its extent depends on viewpoint) and an optional hat."""
    cy, hx = b.y(0.085), b.cx + (b.facing * 0.015 * b.tall if b.side else 0)
    ry, rx = 0.065 * b.tall, 0.05 * b.tall * (0.9 if b.side else 1.0)
    long_hair = cv.ellipse(cy + 0.6 * ry, hx - 0.2 * b.facing * rx * b.side, 1.6 * ry, 1.15 * rx)
    halves = [cv.xx < hx, cv.xx >= hx]  # image-left and image-right halves of the head

    def paint_head(mask: np.ndarray, colour: np.ndarray, lip: int) -> None:
        for k, half in zip((-1, 1), halves):
            cv.paint(mask & half, colour, lip, _DP_HEAD[_lr(s, k)])

    if p.long_hair and s.view != "back":  # falls behind the face
        paint_head(long_hair, p.hair, _HAIR)
    head = cv.ellipse(cy, hx, ry, rx)
    paint_head(head, p.skin, _FACE)
    cap = head if s.view == "back" else head & (cv.yy < cy - 0.25 * ry)
    if b.side:
        cap |= head & ((cv.xx - hx) * b.facing < -0.2 * rx)
    paint_head(cap | (long_hair if p.long_hair and s.view == "back" else False), p.hair, _HAIR)
    if p.carry == "hat":
        crown = cv.ellipse(cy - 0.6 * ry, hx, 0.55 * ry, 1.05 * rx) & (cv.yy < cy - 0.35 * ry)
        paint_head(crown | cv.rect(cy - 0.5 * ry, cy - 0.3 * ry, hx - 1.4 * rx, hx + 1.4 * rx), p.carry_colour, _HAT)


def _background(cv: _Canvas, cam: Camera, rng: np.random.Generator) -> None:
    """The camera's scene through a jittered crop window: varies per image, stays camera-typical."""
    cv.img[:] = cam.wall
    shift = rng.uniform(-8, 8)
    if cam.texture == "tiles":
        cv.img[...] *= (1 - 0.14 * (((cv.yy + shift) // 10 + (cv.xx + shift) // 16) % 2))[..., None]
    elif cam.texture == "blotch":
        blotch = Image.fromarray(rng.normal(1, 0.1, (8, 4)).astype(np.float32), "F").resize(
            (WIDTH, HEIGHT), Image.BILINEAR
        )
        cv.img[...] *= np.asarray(blotch)[..., None]
    else:
        cv.img[...] *= (0.8 + 0.35 * cv.yy / HEIGHT)[..., None]
    cv.img[cv.yy[:, 0] >= cam.ground_y * HEIGHT + rng.uniform(-5, 5)] = cam.ground
    for px in cam.poles:
        cv.img[np.abs(cv.xx - px - shift) < 2.5] = cam.pole_colour


def _occlude(cv: _Canvas, rng: np.random.Generator, heavy: bool = False) -> None:
    """Something (a passer-by, a bench) hides the bottom or one side; hidden pixels are not the person.
    A heavy occluder (Occluded-REID's) always covers a third to a half of the crop."""
    if heavy:
        mask = (
            cv.rect(rng.uniform(55, 85), HEIGHT, -1, WIDTH)
            if rng.random() < 0.5
            else (
                cv.rect(-1, HEIGHT, *((0, rng.uniform(24, 32)) if rng.random() < 0.5 else (rng.uniform(32, 40), WIDTH)))
            )
        )
    elif rng.random() < 0.5:
        mask = cv.rect(rng.uniform(60, 110), HEIGHT, -1, WIDTH)
    else:
        mask = cv.rect(-1, HEIGHT, *((0, rng.uniform(10, 22)) if rng.random() < 0.5 else (rng.uniform(42, 54), WIDTH)))
    cv.paint(mask, rng.uniform(20, 220, 3), _BG, fg=False)


@dataclass(frozen=True)
class Rendering:
    """One crop and its exact cues: RGB (H, W, 3), LIP labels (H, W), DensePose IUV (H, W, 3),
    person mask (H, W) bool and 13 keypoints (x, y, score)."""

    image: np.ndarray
    lip: np.ndarray
    iuv: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray

    @property
    def saliency(self) -> np.ndarray:
        return saliency_map(self.mask)


def render(
    cam: Camera,
    rng: np.random.Generator,
    person: Person | None = None,
    shot: Shot | None = None,
    occlusion: float = 0.12,
    heavy: bool = False,
) -> Rendering:
    """Render one crop with its cues; `occlusion` is the chance that something hides part of it."""
    yy, xx = (a.astype(np.float32) for a in np.mgrid[0:HEIGHT, 0:WIDTH])
    cv = _Canvas(
        np.empty((HEIGHT, WIDTH, 3), np.float32),
        np.zeros((HEIGHT, WIDTH), np.uint8),
        np.zeros((HEIGHT, WIDTH), np.uint8),
        np.zeros((HEIGHT, WIDTH), bool),
        yy,
        xx,
    )
    _background(cv, cam, rng)
    body = None
    if person is not None and shot is not None:
        body = _draw_person(cv, person, shot)
    if rng.random() < occlusion:
        _occlude(cv, rng, heavy)
    light = cam.gain * cam.cast * (1 + 0.2 * (yy / HEIGHT - 0.5))[..., None]
    out = np.clip(cv.img * light + rng.normal(0, cam.noise, cv.img.shape), 0, 255).astype(np.uint8)
    if cam.soft:  # a lower-resolution camera
        out = np.asarray(Image.fromarray(out).resize((WIDTH // 2, HEIGHT // 2), Image.BILINEAR).resize((WIDTH, HEIGHT)))
    keypoints = _keypoints(shot, body, cv.fg) if body is not None else np.zeros((13, 3), np.float32)
    return Rendering(out, cv.lab, _iuv(cv.dp), cv.fg, keypoints)


def saliency_map(mask: np.ndarray) -> np.ndarray:
    """A saliency model's kind of output: the person, softened at its outline, 0-255."""
    return np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)))


def save(r: Rendering, root: Path, key: str, image: np.ndarray | None = None) -> None:
    """Write a rendering as `root/key` (JPEG, PNG or TIFF by suffix) and its exact cues under root/cues/."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = Image.fromarray(r.image if image is None else image)
    if path.suffix == ".jpg":
        pixels.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        pixels.save(path)
    write_cues(root, key, r)


class Scene:
    """The cameras of a dataset and a way to photograph any person with any of them."""

    def __init__(self, seed: int, cameras: int):
        self.seed = seed
        self.cams = [make_camera(np.random.default_rng((seed, 1, c))) for c in range(cameras)]

    def shots(
        self, pid: int, cam: int, n: int, *, occlusion: float = 0.12, heavy: bool = False, stream: int = 5
    ) -> list[Rendering]:
        """`n` images of person `pid` in camera `cam`: one tracklet, so one viewpoint with jitter."""
        person = make_person(np.random.default_rng((self.seed, 3, pid)))
        rng = np.random.default_rng((self.seed, stream, pid, cam))
        view = ("front", "back", "side")[rng.choice(3, p=self.cams[cam].view_p)]
        facing = int(rng.choice((-1, 1)))
        return [render(self.cams[cam], rng, person, make_shot(rng, view, facing), occlusion, heavy) for _ in range(n)]
