"""The shapes world: scenes with known ground truth, their captions, renderer and evaluator.

A scene is one object (shape, colour, size, position) on a plain background, drawn on a 32x32 RGB canvas.
Every scene carries its attributes and its object's pixel mask, so every claim the book makes about
generated images can be scored against ground truth.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Sequence

import numpy as np

CANVAS = 32
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "orange": (240, 140, 30),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.12, "big": 0.22}  # radius as a fraction of the canvas
POSITIONS = {  # object centre (x, y) as a fraction of the canvas
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "center": (0.5, 0.5),
}
WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
ATTRIBUTES = ("size", "colour", "shape", "position", "background")
#: Combinations never shown in training, so the book can test compositional generalisation.
HELD_OUT = ({"colour": "green", "shape": "triangle"}, {"colour": "purple", "shape": "square"})
#: Every word a caption may contain.
VOCABULARY = tuple(sorted(set(
    ["a", "on", "the", "at", "in", "background"]
    + list(SIZES) + list(COLOURS) + list(SHAPES)
    + [w for phrase in WHERE.values() for w in phrase.split()]
)))


@dataclasses.dataclass(frozen=True)
class Scene:
    """One object on a background. ``dx, dy, scale`` jitter the object slightly (0 and 1 = the nominal scene)."""

    size: str
    colour: str
    shape: str
    position: str
    background: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        for name, allowed in (("size", SIZES), ("colour", PALETTE), ("shape", SHAPES),
                              ("position", POSITIONS), ("background", PALETTE)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(allowed)}")
        if self.colour == self.background:
            raise ValueError(f"object colour and background are both {self.colour!r}; they must differ")

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {WHERE[self.position]} on a {self.background} background"

    @property
    def attributes(self) -> dict:
        return {a: getattr(self, a) for a in ATTRIBUTES}

    @property
    def mask(self) -> np.ndarray:
        """Boolean (32, 32) mask of the pixels the object covers (at least half a pixel)."""
        return _coverage(self) >= 0.5

    def render(self) -> np.ndarray:
        """The scene as a float32 (32, 32, 3) array in [0, 1], anti-aliased."""
        cov = _coverage(self)[..., None]
        fg = np.array(PALETTE[self.colour], np.float32) / 255
        bg = np.array(PALETTE[self.background], np.float32) / 255
        return (cov * fg + (1 - cov) * bg).astype(np.float32)

    def replace(self, **changes) -> "Scene":
        return dataclasses.replace(self, **changes)


_SS = 4  # supersampling factor for anti-aliasing
_GRID = (np.arange(CANVAS * _SS, dtype=np.float32) + 0.5) / (CANVAS * _SS)


def _coverage(scene: Scene) -> np.ndarray:
    """Fraction of each pixel covered by the object, from a 4x supersampled test."""
    cx, cy = POSITIONS[scene.position]
    return shape_coverage(scene.shape, cx + scene.dx, cy + scene.dy, SIZES[scene.size] * scene.scale)


def shape_coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """(32, 32) pixel coverage of a shape centred at (cx, cy) with radius r (fractions of the canvas)."""
    x = _GRID[None, :] - cx
    y = _GRID[:, None] - cy
    if shape == "circle":
        inside = x**2 + y**2 <= r**2
    elif shape == "square":
        h = 0.9 * r  # half side: about the circle's area
        inside = (np.abs(x) <= h) & (np.abs(y) <= h)
    else:  # upward equilateral triangle, circumradius 1.25 r, centred on its centroid
        R = 1.25 * r
        base, apex = R / 2, -R
        half_width = (y - apex) / (base - apex) * (R * np.sqrt(3) / 2)
        inside = (y >= apex) & (y <= base) & (np.abs(x) <= half_width)
    return inside.reshape(CANVAS, _SS, CANVAS, _SS).mean(axis=(1, 3))


#: Object area per squared radius, for each shape (fractions of the canvas).
_AREA_PER_R2 = {"circle": np.pi, "square": 1.8**2, "triangle": 3 * np.sqrt(3) / 4 * 1.25**2}


def all_scenes(exclude: Iterable[dict] = ()) -> list[Scene]:
    """Every nominal scene of the grammar (no jitter), minus combinations matching ``exclude``."""
    exclude = list(exclude)
    out = []
    for size, colour, shape, position, background in itertools.product(SIZES, COLOURS, SHAPES, POSITIONS, COLOURS):
        if colour == background:
            continue
        s = Scene(size, colour, shape, position, background)
        if not any(is_held_out(s, [e]) for e in exclude):
            out.append(s)
    return out


def is_held_out(scene: Scene, held_out: Iterable[dict] = HELD_OUT) -> bool:
    """Whether the scene matches any of the held-out attribute combinations."""
    return any(all(getattr(scene, k) == v for k, v in combo.items()) for combo in held_out)


def sample_scenes(n: int, seed: int, exclude: Iterable[dict] = (), jitter: bool = True) -> list[Scene]:
    """``n`` random scenes from a seeded generator, skipping combinations matching ``exclude``.

    With ``jitter`` the object is moved by up to 0.04 of the canvas and scaled by 0.9-1.1, so a caption
    describes many images, not one.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rng = np.random.default_rng(seed)
    exclude = list(exclude)
    scenes = []
    while len(scenes) < n:
        colour, background = rng.choice(len(COLOURS), size=2, replace=False)
        s = Scene(
            size=list(SIZES)[rng.integers(len(SIZES))],
            colour=COLOURS[colour],
            shape=SHAPES[rng.integers(len(SHAPES))],
            position=list(POSITIONS)[rng.integers(len(POSITIONS))],
            background=COLOURS[background],
            dx=float(rng.uniform(-0.04, 0.04)) if jitter else 0.0,
            dy=float(rng.uniform(-0.04, 0.04)) if jitter else 0.0,
            scale=float(rng.uniform(0.9, 1.1)) if jitter else 1.0,
        )
        if not is_held_out(s, exclude):
            scenes.append(s)
    return scenes


def render(scenes: Scene | Sequence[Scene]) -> np.ndarray:
    """Render one scene (32, 32, 3) or a list of scenes (B, 32, 32, 3), floats in [0, 1]."""
    if isinstance(scenes, Scene):
        return scenes.render()
    return np.stack([s.render() for s in scenes])


def parse_caption(caption: str) -> Scene:
    """Caption -> nominal Scene. Unknown words and invalid combinations raise ValueError naming them."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    words = caption.lower().split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown} in caption {caption!r}; known words: {list(VOCABULARY)}")
    expected = "a {size} {colour} {shape} {where} on a {background} background"
    if len(words) != 11 or words[0] != "a" or words[7:9] != ["on", "a"] or words[10] != "background":
        raise ValueError(f"caption {caption!r} does not follow the grammar {expected!r}")
    where = " ".join(words[4:7])
    positions = {v: k for k, v in WHERE.items()}
    if where not in positions:
        raise ValueError(f"unknown position phrase {where!r} in {caption!r}; expected one of {list(positions)}")
    fields = dict(size=words[1], colour=words[2], shape=words[3], position=positions[where], background=words[9])
    for name, allowed in (("size", SIZES), ("colour", PALETTE), ("shape", SHAPES), ("background", PALETTE)):
        if fields[name] not in allowed:
            raise ValueError(f"{fields[name]!r} is not a {name} in {caption!r}; expected one of {sorted(allowed)}")
    return Scene(**fields)


# ----------------------------------------------------------------------------------------------- evaluator

_PALETTE_ARRAY = np.array(list(PALETTE.values()), np.float32) / 255


def _as_image(image) -> np.ndarray:
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = np.asarray(image.convert("RGB"), np.float32) / 255
    image = np.asarray(image)
    if image.shape != (CANVAS, CANVAS, 3):
        raise ValueError(f"expected an image of shape ({CANVAS}, {CANVAS}, 3), got {image.shape}; "
                         "pass one image at a time or use evaluate_batch")
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected a float array in [0, 1] or uint8, got dtype {image.dtype}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if image.min() < -0.05 or image.max() > 1.05:
        raise ValueError(f"expected values in [0, 1], got range [{image.min():.3f}, {image.max():.3f}]; "
                         "convert from [-1, 1] with (x + 1) / 2")
    return image.astype(np.float32)


def _soft_coverage(img, mask, fg, bg) -> np.ndarray:
    """Per-pixel fraction of object colour (0 = background), kept to the object's mask grown by one pixel."""
    f, b = _PALETTE_ARRAY[fg], _PALETTE_ARRAY[bg]
    alpha = np.clip((img - b) @ (f - b) / ((f - b) ** 2).sum(), 0, 1)
    padded = np.pad(mask, 1)
    near = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            near |= padded[dy:dy + CANVAS, dx:dx + CANVAS]
    return np.where(near, alpha, 0.0)


def evaluate(image, min_iou: float = 0.5) -> dict:
    """Read a (32, 32, 3) image (floats in [0, 1], uint8 or PIL) back into its attributes from pixels alone.

    Each pixel takes its nearest palette colour; the commonest is the background, the commonest of the rest the
    object's colour and its pixels the object's mask. Around that mask, each pixel's mix of object and background
    colour gives a soft coverage. For each shape, an ideal coverage with the object's centroid and area is drawn; the
    best match (soft intersection over union at least ``min_iou``) names the shape, its radius the size
    (small below 0.17 of the canvas) and the centroid's nearest nominal centre the position. Attributes that cannot
    be read are None. Returns the attributes plus ``mask`` (the detected object) and ``match_iou``.
    """
    img = _as_image(image)
    dist = ((img.reshape(-1, 1, 3) - _PALETTE_ARRAY[None]) ** 2).sum(-1)
    labels = dist.argmin(1)
    counts = np.bincount(labels, minlength=len(COLOURS))
    bg = int(counts.argmax())
    result = dict.fromkeys(ATTRIBUTES)
    result.update(background=COLOURS[bg], mask=np.zeros((CANVAS, CANVAS), bool), match_iou=0.0)
    counts[bg] = 0
    fg = int(counts.argmax())
    if counts[fg] < 8:  # no object to speak of
        return result
    mask = (labels == fg).reshape(CANVAS, CANVAS)
    result.update(colour=COLOURS[fg], mask=mask)
    alpha = _soft_coverage(img, mask, fg, bg)
    ys, xs = np.mgrid[:CANVAS, :CANVAS]
    total = alpha.sum()
    cx, cy = ((xs * alpha).sum() / total + 0.5) / CANVAS, ((ys * alpha).sum() / total + 0.5) / CANVAS
    area = total / CANVAS**2
    best = (0.0, None, None)
    for shape in SHAPES:
        r = np.sqrt(area / _AREA_PER_R2[shape])
        ideal = shape_coverage(shape, cx, cy, r)
        iou = np.minimum(ideal, alpha).sum() / np.maximum(ideal, alpha).sum()
        best = max(best, (iou, shape, r), key=lambda b: b[0])
    iou, shape, r = best
    result["match_iou"] = float(iou)
    if iou >= min_iou:
        result["shape"] = shape
        result["size"] = "small" if r < np.sqrt(SIZES["small"] * SIZES["big"]) else "big"
        result["position"] = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    return result


def evaluate_batch(images) -> list[dict]:
    """``evaluate`` over a batch (B, 32, 32, 3) or a list of images."""
    return [evaluate(im) for im in images]


def score(predicted: Sequence[dict], truth: Sequence[Scene | dict]) -> dict:
    """Per-attribute accuracy and the fraction with every attribute right, of evaluations against ground truth."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} evaluations but {len(truth)} ground-truth scenes")
    truth = [t.attributes if isinstance(t, Scene) else t for t in truth]
    right = np.array([[p[a] == t[a] for a in ATTRIBUTES] for p, t in zip(predicted, truth)], bool)
    out = {a: float(right[:, i].mean()) for i, a in enumerate(ATTRIBUTES)}
    out["all"] = float(right.all(1).mean())
    return out
