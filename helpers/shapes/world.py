"""The shapes world: scenes with known ground truth, their captions, renderer and evaluator.

A scene is one object (shape, colour, size, position) on a plain background, drawn on a 32x32 RGB canvas.
Every scene carries its attributes and its object's pixel mask, so every claim the book makes about
generated images can be scored against ground truth.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

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
#: Version 2 adds content no caption names, drawn at random per image and known as ground truth:
#: stripes in the background (orientation and phase) and a pattern inside the object. Both are shifts of
#: brightness small enough that every pixel's nearest palette colour is unchanged, so every captioned attribute
#: reads back exactly as in version 1.
TEXTURES = ("horizontal", "vertical", "diagonal", "antidiagonal")
PATTERNS = ("plain", "dot", "split")
UNNAMED = ("texture", "pattern")
TEXTURE_AMPLITUDE = 0.06  # brightness, in [0, 1] units: the sine's peak
TEXTURE_PERIOD = 8.0  # pixels across one stripe pair
PATTERN_AMPLITUDE = 0.12  # brightness shift inside the pattern
_NORMALS = {"horizontal": (0.0, 1.0), "vertical": (1.0, 0.0), "diagonal": (0.7071068, 0.7071068),
            "antidiagonal": (0.7071068, -0.7071068)}
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
    """One object on a background. ``dx, dy, scale`` jitter the object slightly (0 and 1 = the nominal scene).

    Version 2 scenes also carry content the caption does not name: ``texture`` (stripe orientation, None = a flat
    background as in version 1) with ``phase`` in [0, 1), and the object's inner ``pattern``.
    """

    size: str
    colour: str
    shape: str
    position: str
    background: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    texture: str | None = None
    phase: float = 0.0
    pattern: str = "plain"

    def __post_init__(self):
        for name, allowed in (("size", SIZES), ("colour", PALETTE), ("shape", SHAPES),
                              ("position", POSITIONS), ("background", PALETTE)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(allowed)}")
        if self.colour == self.background:
            raise ValueError(f"object colour and background are both {self.colour!r}; they must differ")
        if self.texture is not None and self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}; expected None or one of {list(TEXTURES)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {list(PATTERNS)}")

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {WHERE[self.position]} on a {self.background} background"

    @property
    def attributes(self) -> dict:
        """The five captioned attributes."""
        return {a: getattr(self, a) for a in ATTRIBUTES}

    @property
    def unnamed(self) -> dict:
        """What the caption does not name (version 2): ``texture`` and ``pattern``."""
        return {a: getattr(self, a) for a in UNNAMED}

    @property
    def mask(self) -> np.ndarray:
        """Boolean (32, 32) mask of the pixels the object covers (at least half a pixel)."""
        return _coverage(self) >= 0.5

    def render(self) -> np.ndarray:
        """The scene as a float32 (32, 32, 3) array in [0, 1], anti-aliased."""
        cov = _coverage(self)[..., None]
        fg = np.array(PALETTE[self.colour], np.float32) / 255
        bg = np.array(PALETTE[self.background], np.float32) / 255
        if self.texture is None and self.pattern == "plain":  # version 1: flat colours
            return (cov * fg + (1 - cov) * bg).astype(np.float32)
        bg = bg + texture_field(self.texture, self.phase)[..., None]
        shift = pattern_sign(self.colour) * PATTERN_AMPLITUDE
        pat = _coverage(self, region=self.pattern)[..., None]
        img = (1 - cov) * bg + (cov - pat) * fg + pat * (fg + shift)
        return np.clip(img, 0, 1).astype(np.float32)

    def replace(self, **changes) -> Scene:
        return dataclasses.replace(self, **changes)


_SS = 4  # supersampling factor for anti-aliasing
_GRID = (np.arange(CANVAS * _SS, dtype=np.float32) + 0.5) / (CANVAS * _SS)


def _coverage(scene: Scene, region: str | None = None) -> np.ndarray:
    """Fraction of each pixel covered by the object (or by its pattern ``region``), 4x supersampled."""
    cx, cy = POSITIONS[scene.position]
    return shape_coverage(scene.shape, cx + scene.dx, cy + scene.dy, SIZES[scene.size] * scene.scale, region)


def texture_field(texture: str | None, phase: float) -> np.ndarray:
    """(32, 32) brightness offsets of the background stripes (zeros for a flat background)."""
    if texture is None:
        return np.zeros((CANVAS, CANVAS), np.float32)
    nx, ny = _NORMALS[texture]
    ys, xs = np.mgrid[:CANVAS, :CANVAS].astype(np.float32) + 0.5
    along = (nx * xs + ny * ys) / TEXTURE_PERIOD
    return (TEXTURE_AMPLITUDE * np.sin(2 * np.pi * (along + phase))).astype(np.float32)


def pattern_sign(colour: str) -> float:
    """Which way a pattern shifts brightness: away from the nearest other palette colour (darker for orange,
    white, purple and red; lighter for the rest)."""
    return -1.0 if colour in ("orange", "white", "purple", "red") else 1.0


def shape_coverage(shape: str, cx: float, cy: float, r: float, region: str | None = None) -> np.ndarray:
    """(32, 32) pixel coverage of a shape centred at (cx, cy) with radius r (fractions of the canvas).

    ``region`` keeps only part of it: "dot" (within 0.5 r of the centre), "split" (the half above the centre),
    "plain" (nothing)."""
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
    if region == "plain":
        inside = np.zeros_like(inside)
    elif region == "dot":
        inside = inside & (x**2 + y**2 <= (0.5 * r) ** 2)
    elif region == "split":
        inside = inside & (y < 0) & (x == x)
    inside = np.broadcast_to(inside, (CANVAS * _SS, CANVAS * _SS))
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


def sample_scenes(n: int, seed: int, exclude: Iterable[dict] = (), jitter: bool = True,
                  world: int = 1) -> list[Scene]:
    """``n`` random scenes from a seeded generator, skipping combinations matching ``exclude``.

    With ``jitter`` the object is moved by up to 0.04 of the canvas and scaled by 0.9-1.1, so a caption
    describes many images, not one. ``world=2`` also draws the unnamed content (texture, phase, pattern); the
    captioned attributes of scene i do not depend on ``world``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if world not in (1, 2):
        raise ValueError(f"world must be 1 or 2, got {world!r}")
    exclude = list(exclude)
    if n and exclude and not all_scenes(exclude):
        raise ValueError(f"exclude={exclude} rules out every scene (an empty dict matches all); nothing to sample")
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 2])  # a separate stream, so world 2 keeps world 1's captions
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
        if world == 2:
            s = s.replace(texture=TEXTURES[extra.integers(len(TEXTURES))], phase=float(extra.uniform()),
                          pattern=PATTERNS[extra.integers(len(PATTERNS))])
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


def _grow(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """The mask grown by ``steps`` pixels (8-neighbourhood)."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        grown = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy:dy + CANVAS, dx:dx + CANVAS]
        mask = grown
    return mask


def _soft_coverage(img, mask, fg, bg) -> np.ndarray:
    """Per-pixel fraction of object colour (0 = background), kept to the object's mask grown by one pixel.

    ``bg`` may be a (32, 32, 3) field (a textured background); pixels deep inside the mask count as fully covered,
    so an inner pattern does not thin the silhouette."""
    f = _PALETTE_ARRAY[fg]
    b = _PALETTE_ARRAY[bg] if np.ndim(bg) == 0 else bg
    d = f - b
    alpha = np.clip(((img - b) * d).sum(-1) / (d**2).sum(-1), 0, 1)
    alpha = np.where(~_grow(~mask), 1.0, alpha)
    return np.where(_grow(mask), alpha, 0.0)


def _read_texture(img, bg: int, keep: np.ndarray) -> tuple[str | None, float, np.ndarray]:
    """Fit background stripes of each orientation to the brightness of the ``keep`` pixels (least squares, free
    phase); the best fit names the texture if its amplitude is at least half the rendered one. Returns
    (texture or None, phase, the fitted (32, 32) offsets)."""
    light = (img - _PALETTE_ARRAY[bg]).mean(-1)[keep]
    ys, xs = np.mgrid[:CANVAS, :CANVAS].astype(np.float32) + 0.5
    best = (0.0, None, 0.0, np.zeros((CANVAS, CANVAS), np.float32))
    for name, (nx, ny) in _NORMALS.items():
        angle = 2 * np.pi * (nx * xs + ny * ys) / TEXTURE_PERIOD
        basis = np.stack([np.sin(angle), np.cos(angle), np.ones_like(angle)], -1)
        coef = np.linalg.lstsq(basis[keep], light, rcond=None)[0]
        amplitude = float(np.hypot(coef[0], coef[1]))
        if amplitude > best[0]:
            phase = float(np.arctan2(coef[1], coef[0]) / (2 * np.pi)) % 1.0
            best = (amplitude, name, phase, (basis[..., :2] @ coef[:2]).astype(np.float32))
    amplitude, name, phase, field = best
    if amplitude < TEXTURE_AMPLITUDE / 2:
        return None, 0.0, np.zeros((CANVAS, CANVAS), np.float32)
    return name, phase, field


def _read_pattern(img, fg: int, inner: np.ndarray, cx: float, cy: float, r: float) -> str:
    """Which region inside the object is shifted in brightness: "dot", "split" or none ("plain")."""
    if inner.sum() < 4:
        return "plain"
    shift = pattern_sign(COLOURS[fg]) * (img - _PALETTE_ARRAY[fg]).mean(-1)
    ys, xs = (np.mgrid[:CANVAS, :CANVAS] + 0.5) / CANVAS
    regions = {"dot": (xs - cx) ** 2 + (ys - cy) ** 2 <= (0.5 * r) ** 2, "split": ys < cy}
    best, name = PATTERN_AMPLITUDE / 2, "plain"
    for region, where in regions.items():
        a, b = inner & where, inner & ~where
        if a.sum():  # against the rest of the object, or the palette colour when the object is too small
            contrast = shift[a].mean() - (shift[b].mean() if b.sum() >= 2 else 0.0)
            if contrast > best:
                best, name = contrast, region
    return name


def evaluate(image, min_iou: float = 0.5) -> dict:
    """Read a (32, 32, 3) image (floats in [0, 1], uint8 or PIL) back into its attributes from pixels alone.

    Each pixel takes its nearest palette colour; the commonest is the background, the commonest of the rest the
    object's colour and its pixels the object's mask. Background stripes are fitted on the background pixels away
    from the object (``texture``, ``phase``) and taken out. Around the mask, each pixel's mix of object and
    background colour gives a soft coverage. For each shape, an ideal coverage with the object's centroid and area
    is drawn; the best match (soft intersection over union at least ``min_iou``) names the shape, its radius the
    size (small below 0.17 of the canvas) and the centroid's nearest nominal centre the position. Inside the object,
    the region shifted in brightness names the ``pattern``. Attributes that cannot be read are None. Returns the
    attributes plus ``mask`` (the detected object), ``phase`` and ``match_iou``.
    """
    img = _as_image(image)
    dist = ((img.reshape(-1, 1, 3) - _PALETTE_ARRAY[None]) ** 2).sum(-1)
    labels = dist.argmin(1)
    counts = np.bincount(labels, minlength=len(COLOURS))
    bg = int(counts.argmax())
    result = dict.fromkeys(ATTRIBUTES + UNNAMED)
    result.update(background=COLOURS[bg], mask=np.zeros((CANVAS, CANVAS), bool), match_iou=0.0, phase=0.0)
    counts[bg] = 0
    fg = int(counts.argmax())
    if counts[fg] < 8:  # no object to speak of
        result["texture"], result["phase"], _ = _read_texture(img, bg, np.ones((CANVAS, CANVAS), bool))
        return result
    mask = (labels == fg).reshape(CANVAS, CANVAS)
    result.update(colour=COLOURS[fg], mask=mask)
    far = (labels == bg).reshape(CANVAS, CANVAS) & ~_grow(mask, 2)
    result["texture"], result["phase"], field = _read_texture(img, bg, far)
    alpha = _soft_coverage(img, mask, fg, _PALETTE_ARRAY[bg] + field[..., None])
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
    inner = mask & (shape_coverage(shape, cx, cy, r) > 0.99) if shape else mask
    result["match_iou"] = float(iou)
    if iou >= min_iou:
        result["shape"] = shape
        result["size"] = "small" if r < np.sqrt(SIZES["small"] * SIZES["big"]) else "big"
        result["position"] = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
        result["pattern"] = _read_pattern(img, fg, inner, cx, cy, r)
    return result


def evaluate_batch(images) -> list[dict]:
    """``evaluate`` over a batch (B, 32, 32, 3) or a list of images."""
    return [evaluate(im) for im in images]


def agreement(predicted: Sequence[dict], truth: Sequence[Scene | dict], attributes: Sequence[str] = ATTRIBUTES
              ) -> np.ndarray:
    """Bool (images, attributes): whether each evaluation reads each attribute as the ground truth has it.
    ``agreement(...).all(1)`` is "every attribute right", image by image (for paired tests)."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} evaluations but {len(truth)} ground-truth scenes")
    unknown = set(attributes) - set(ATTRIBUTES + UNNAMED)
    if unknown:
        raise ValueError(f"unknown attribute(s) {sorted(unknown)}; expected some of {list(ATTRIBUTES + UNNAMED)}")
    truth = [{a: getattr(t, a) for a in attributes} if isinstance(t, Scene) else t for t in truth]
    return np.array([[p[a] == t[a] for a in attributes] for p, t in zip(predicted, truth)], bool).reshape(
        len(truth), len(attributes))


def score(predicted: Sequence[dict], truth: Sequence[Scene | dict], attributes: Sequence[str] = ATTRIBUTES) -> dict:
    """Per-attribute accuracy and the fraction with every attribute right, of evaluations against ground truth.
    ``attributes=UNNAMED`` scores the unnamed content (version 2) instead of the captioned attributes."""
    right = agreement(predicted, truth, attributes)
    out = {a: float(right[:, i].mean()) for i, a in enumerate(attributes)}
    out["all"] = float(right.all(1).mean())
    return out


def stray_fraction(images, distance: float = 0.25) -> np.ndarray:
    """(images,): the fraction of each image's pixels farther than ``distance`` (RGB in [0, 1]) from every palette
    colour: what a clean render or a good generation hardly has, and a damaged image has many of (the evaluator
    snaps every pixel to its nearest palette colour, so it reads attributes even from mixed-colour patches)."""
    x = np.asarray(images, np.float32).reshape(len(images), -1, 1, 3)
    return (np.sqrt(((x - _PALETTE_ARRAY) ** 2).sum(-1)).min(-1) > distance).mean(-1)
