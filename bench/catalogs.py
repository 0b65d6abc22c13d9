"""Synthetic labelled image catalogs that look nothing like Fashion-MNIST, for bench/heldout.py.

Pure numpy + PIL: seeded and deterministic (the same ``n`` and ``seed`` give the same bytes), no
network, no Django. Each generator returns ``(files, labels)``: ``n`` encoded image files (bytes,
ready to be written next to a catalog CSV) and their category names, classes balanced (``i % k``,
shuffled).

- :func:`colour_objects`: 26 kinds of product (mug, bottle, sneaker, lamp, ...) drawn from
  primitives with a random main and second colour, shading from a random light direction, a soft
  shadow, random scale, position and small rotation, on a white packshot, flat coloured or gradient
  background; RGB JPEG, 96-160 px. The category is the object's *shape*: colour says nothing.
- :func:`line_drawings`: the 10 digits drawn as strokes from per-class polylines, with random
  stroke width, point jitter, slant, rotation, scale and position, black on white or white on black;
  grayscale PNG, 28-64 px.
- :func:`recoloured_crops`: 10 pattern types (stripes, checks, dots, waves, rings, blobs, zigzag,
  grid, rays, bricks) at a random period, orientation and phase (a random crop of an endless
  texture), recoloured with two random colours, lighting and noise; RGB JPEG, 64-128 px.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OBJECT_CANVAS = 256  # objects are drawn at this size, then scaled down (anti-aliasing)

# --------------------------------------------------------------------------- colour objects
# Each object: primitives in 0..1 coordinates of its canvas; colour 0 = main, 1 = second, 2 = dark.
# ("poly", c, points) | ("rect", c, box) | ("ellipse", c, box) | ("ring", c, box, width)
# | ("line", c, points, width) | ("pie", c, box, start, end) | ("arc", c, box, start, end, width)
OBJECTS = {
    "mug": [("ring", 0, (0.58, 0.38, 0.86, 0.70), 0.05), ("rect", 0, (0.22, 0.28, 0.68, 0.86))],
    "bottle": [("rect", 0, (0.36, 0.42, 0.64, 0.94)), ("poly", 0, [(0.36, 0.44), (0.45, 0.30), (0.55, 0.30),
               (0.64, 0.44)]), ("rect", 0, (0.45, 0.14, 0.55, 0.32)), ("rect", 1, (0.43, 0.07, 0.57, 0.15)),
               ("rect", 1, (0.36, 0.55, 0.64, 0.75))],
    "wine_glass": [("pie", 0, (0.28, 0.02, 0.72, 0.56), 0, 180), ("line", 0, [(0.5, 0.5), (0.5, 0.86)], 0.03),
                   ("ellipse", 0, (0.32, 0.83, 0.68, 0.92))],
    "sneaker": [("poly", 0, [(0.06, 0.30), (0.34, 0.30), (0.46, 0.48), (0.80, 0.54), (0.94, 0.64),
                (0.94, 0.74), (0.06, 0.74)]), ("rect", 1, (0.05, 0.72, 0.95, 0.82)),
                ("line", 2, [(0.40, 0.42), (0.46, 0.36), (0.52, 0.50)], 0.015)],
    "table_lamp": [("poly", 0, [(0.30, 0.10), (0.70, 0.10), (0.84, 0.42), (0.16, 0.42)]),
                   ("line", 1, [(0.5, 0.42), (0.5, 0.84)], 0.035), ("ellipse", 1, (0.30, 0.80, 0.70, 0.92))],
    "chair": [("rect", 0, (0.25, 0.05, 0.72, 0.50)), ("rect", 0, (0.20, 0.50, 0.80, 0.60)),
              ("line", 1, [(0.24, 0.60), (0.22, 0.95)], 0.04), ("line", 1, [(0.76, 0.60), (0.78, 0.95)], 0.04)],
    "table": [("rect", 0, (0.05, 0.35, 0.95, 0.45)), ("line", 1, [(0.12, 0.45), (0.12, 0.92)], 0.05),
              ("line", 1, [(0.88, 0.45), (0.88, 0.92)], 0.05)],
    "t_shirt": [("poly", 0, [(0.35, 0.12), (0.65, 0.12), (0.95, 0.30), (0.85, 0.45), (0.74, 0.38),
                (0.74, 0.92), (0.26, 0.92), (0.26, 0.38), (0.15, 0.45), (0.05, 0.30)]),
                ("pie", 1, (0.40, 0.04, 0.60, 0.22), 0, 180)],
    "trousers": [("poly", 0, [(0.25, 0.05), (0.75, 0.05), (0.82, 0.95), (0.58, 0.95), (0.5, 0.35),
                 (0.42, 0.95), (0.18, 0.95)]), ("rect", 1, (0.25, 0.05, 0.75, 0.12))],
    "top_hat": [("rect", 0, (0.30, 0.10, 0.70, 0.72)), ("rect", 1, (0.30, 0.56, 0.70, 0.66)),
                ("ellipse", 0, (0.08, 0.66, 0.92, 0.82))],
    "cap": [("pie", 0, (0.15, 0.25, 0.75, 0.95), 180, 360), ("poly", 1, [(0.70, 0.56), (0.97, 0.62),
            (0.95, 0.68), (0.70, 0.64)]), ("ellipse", 2, (0.41, 0.21, 0.49, 0.29))],
    "handbag": [("arc", 1, (0.30, 0.08, 0.70, 0.60), 180, 360, 0.04),
                ("poly", 0, [(0.22, 0.34), (0.78, 0.34), (0.88, 0.88), (0.12, 0.88)])],
    "umbrella": [("pie", 0, (0.05, 0.10, 0.95, 0.80), 180, 360), ("line", 2, [(0.5, 0.45), (0.5, 0.86)], 0.025),
                 ("arc", 2, (0.36, 0.78, 0.52, 0.94), 0, 180, 0.025)],
    "wall_clock": [("ellipse", 0, (0.08, 0.08, 0.92, 0.92)), ("ellipse", 1, (0.16, 0.16, 0.84, 0.84)),
                   ("line", 2, [(0.5, 0.5), (0.5, 0.24)], 0.03), ("line", 2, [(0.5, 0.5), (0.70, 0.58)], 0.03)],
    "vase": [("poly", 0, [(0.40, 0.06), (0.60, 0.06), (0.56, 0.22), (0.80, 0.50), (0.70, 0.90), (0.30, 0.90),
             (0.20, 0.50), (0.44, 0.22)]), ("line", 1, [(0.25, 0.55), (0.75, 0.55)], 0.04)],
    "teapot": [("ellipse", 0, (0.22, 0.30, 0.78, 0.88)), ("poly", 0, [(0.72, 0.55), (0.97, 0.32), (0.95, 0.40),
               (0.74, 0.72)]), ("ring", 0, (0.05, 0.42, 0.32, 0.72), 0.045), ("ellipse", 1, (0.40, 0.20, 0.60, 0.34))],
    "book": [("rect", 0, (0.22, 0.08, 0.78, 0.92)), ("rect", 1, (0.22, 0.08, 0.32, 0.92)),
             ("rect", 2, (0.40, 0.22, 0.70, 0.30))],
    "phone": [("rect", 0, (0.32, 0.06, 0.68, 0.94)), ("rect", 2, (0.35, 0.12, 0.65, 0.84)),
              ("ellipse", 1, (0.46, 0.86, 0.54, 0.92))],
    "laptop": [("rect", 0, (0.18, 0.15, 0.82, 0.60)), ("rect", 2, (0.22, 0.19, 0.78, 0.56)),
               ("poly", 0, [(0.18, 0.62), (0.82, 0.62), (0.96, 0.76), (0.04, 0.76)])],
    "headphones": [("arc", 0, (0.18, 0.10, 0.82, 0.80), 180, 360, 0.06), ("ellipse", 1, (0.10, 0.42, 0.32, 0.78)),
                   ("ellipse", 1, (0.68, 0.42, 0.90, 0.78))],
    "sunglasses": [("ellipse", 2, (0.06, 0.38, 0.46, 0.66)), ("ellipse", 2, (0.54, 0.38, 0.94, 0.66)),
                   ("arc", 0, (0.40, 0.38, 0.60, 0.52), 180, 360, 0.03), ("line", 0, [(0.06, 0.44), (0.0, 0.40)], 0.03),
                   ("line", 0, [(0.94, 0.44), (1.0, 0.40)], 0.03)],
    "key": [("ring", 0, (0.06, 0.32, 0.40, 0.66), 0.08), ("line", 0, [(0.38, 0.49), (0.92, 0.49)], 0.06),
            ("rect", 0, (0.76, 0.49, 0.82, 0.64)), ("rect", 0, (0.86, 0.49, 0.92, 0.60))],
    "spoon": [("ellipse", 0, (0.36, 0.04, 0.64, 0.40)), ("line", 0, [(0.5, 0.36), (0.5, 0.96)], 0.05)],
    "bucket": [("arc", 1, (0.22, 0.05, 0.78, 0.55), 180, 360, 0.03),
               ("poly", 0, [(0.18, 0.30), (0.82, 0.30), (0.72, 0.92), (0.28, 0.92)])],
    "traffic_cone": [("poly", 0, [(0.44, 0.06), (0.56, 0.06), (0.78, 0.86), (0.22, 0.86)]),
                     ("poly", 1, [(0.38, 0.34), (0.62, 0.34), (0.66, 0.50), (0.34, 0.50)]),
                     ("rect", 0, (0.10, 0.84, 0.90, 0.94))],
    "guitar": [("ellipse", 0, (0.22, 0.52, 0.78, 0.96)), ("ellipse", 0, (0.30, 0.30, 0.70, 0.66)),
               ("ellipse", 2, (0.43, 0.62, 0.57, 0.76)), ("rect", 1, (0.46, 0.03, 0.54, 0.56))],
}
OBJECT_CLASSES = sorted(OBJECTS)


def _balanced_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % k
    rng.shuffle(labels)
    return labels


def _random_colour(rng, low=0, high=256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


def _encode(image: Image.Image, fmt: str, rng=None) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(75, 96)) if rng is not None else 90)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """An encoded file of a catalog, decoded (and loaded)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _draw_object(kind: str, colours) -> Image.Image:
    """The object alone on a transparent OBJECT_CANVAS square."""
    s = OBJECT_CANVAS
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for prim in OBJECTS[kind]:
        shape, fill = prim[0], colours[prim[1]] + (255,)
        if shape == "poly":
            draw.polygon([(x * s, y * s) for x, y in prim[2]], fill=fill)
        elif shape in ("rect", "ellipse", "ring", "pie", "arc"):
            box = [v * s for v in prim[2]]
            if shape == "rect":
                draw.rectangle(box, fill=fill)
            elif shape == "ellipse":
                draw.ellipse(box, fill=fill)
            elif shape == "ring":
                draw.ellipse(box, outline=fill, width=max(1, int(prim[3] * s)))
            elif shape == "pie":
                draw.pieslice(box, prim[3], prim[4], fill=fill)
            else:
                draw.arc(box, prim[3], prim[4], fill=fill, width=max(1, int(prim[5] * s)))
        elif shape == "line":
            draw.line([(x * s, y * s) for x, y in prim[2]], fill=fill, width=max(1, int(prim[3] * s)), joint="curve")
    return layer


def _shade(layer: Image.Image, rng) -> Image.Image:
    """Light from a random direction: a linear ramp multiplies the object's colours."""
    rgba = np.asarray(layer, dtype=np.float32)
    s = rgba.shape[0]
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:s, 0:s] / (s - 1) - 0.5
    ramp = 1.0 + rng.uniform(0.25, 0.6) * (xx * math.cos(angle) + yy * math.sin(angle)) * 2
    rgba[..., :3] = np.clip(rgba[..., :3] * ramp[..., None], 0, 255)
    return Image.fromarray(rgba.astype(np.uint8), "RGBA")


def _background(size: int, rng) -> Image.Image:
    """A white packshot, a flat colour or a two-colour gradient."""
    style = rng.integers(3)
    if style == 0:
        grey = int(rng.integers(232, 256))
        return Image.new("RGB", (size, size), (grey, grey, grey))
    if style == 1:
        return Image.new("RGB", (size, size), _random_colour(rng))
    a, b = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    return Image.fromarray((a * (1 - t) + b * t).astype(np.uint8), "RGB")


def _one_object(kind: str, rng) -> Image.Image:
    size = int(rng.integers(96, 161))
    background = _background(size, rng)
    centre = np.asarray(background.getpixel((size // 2, size // 2)), np.int32)
    main = _random_colour(rng)
    for _ in range(8):  # an object that does not vanish into its background
        if np.abs(np.asarray(main) - centre).sum() > 120:
            break
        main = _random_colour(rng)
    colours = [main, _random_colour(rng), _random_colour(rng, 0, 70)]
    layer = _shade(_draw_object(kind, colours), rng)
    side = int(size * rng.uniform(0.5, 0.9))
    layer = layer.resize((side, side), Image.LANCZOS).rotate(float(rng.uniform(-15, 15)), Image.BICUBIC, expand=True)
    x = int(rng.integers(0, max(1, size - layer.width + 1)))
    y = int(rng.integers(0, max(1, size - layer.height + 1)))
    shadow = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    shadow.putalpha(layer.getchannel("A").point(lambda a: a * 0.35))
    shadow = shadow.filter(ImageFilter.GaussianBlur(size / 40))
    offset = int(size * 0.03)
    background.paste(shadow, (x + offset, y + offset), shadow)
    background.paste(layer, (x, y), layer)
    light = rng.uniform(0.8, 1.15)
    pixels = np.clip(np.asarray(background, np.float32) * light + rng.normal(0, 3, (size, size, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def colour_objects(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """``n`` JPEG "product photos" of the 26 OBJECTS; the label is the kind of object."""
    rng = np.random.default_rng([seed, 1])
    labels = _balanced_labels(n, len(OBJECT_CLASSES), rng)
    files = [_encode(_one_object(OBJECT_CLASSES[k], rng), "JPEG", rng) for k in labels]
    return files, [OBJECT_CLASSES[k] for k in labels]


# --------------------------------------------------------------------------- line drawings


def _arc(cx, cy, rx, ry, start, end, steps=14) -> list[tuple[float, float]]:
    """Points on an ellipse, angles in degrees (0 = right, 90 = down)."""
    angles = np.radians(np.linspace(start, end, steps))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Each digit: strokes, each a polyline in 0..1 coordinates (y down).
DIGITS = {
    "0": [_arc(0.5, 0.5, 0.28, 0.40, 0, 360, 20)],
    "1": [[(0.32, 0.26), (0.52, 0.10), (0.52, 0.90)]],
    "2": [_arc(0.5, 0.32, 0.24, 0.22, 190, 380, 10) + [(0.22, 0.90), (0.80, 0.90)]],
    "3": [_arc(0.48, 0.30, 0.22, 0.20, 200, 450, 10) + _arc(0.48, 0.70, 0.26, 0.21, 270, 510, 10)],
    "4": [[(0.64, 0.90), (0.64, 0.10), (0.18, 0.64), (0.82, 0.64)]],
    "5": [[(0.76, 0.10), (0.30, 0.10), (0.27, 0.46)] + _arc(0.48, 0.66, 0.27, 0.25, 230, 500, 12)],
    "6": [_arc(0.52, 0.40, 0.26, 0.32, 300, 180, 8) + _arc(0.50, 0.68, 0.24, 0.22, 180, 540, 14)],
    "7": [[(0.20, 0.12), (0.80, 0.12), (0.42, 0.90)], [(0.36, 0.50), (0.70, 0.50)]],
    "8": [_arc(0.5, 0.29, 0.20, 0.19, 90, 450, 14), _arc(0.5, 0.70, 0.25, 0.22, -90, 270, 16)],
    "9": [_arc(0.50, 0.33, 0.24, 0.22, 0, 360, 16), [(0.74, 0.33), (0.68, 0.90)]],
}
DIGIT_CLASSES = sorted(DIGITS)


def _one_digit(label: str, rng) -> Image.Image:
    size = int(rng.integers(28, 65))
    scale = 4  # drawn large, then reduced (smooth strokes)
    s = size * scale
    slant, angle = rng.uniform(-0.35, 0.35), math.radians(rng.uniform(-12, 12))
    zoom = rng.uniform(0.6, 0.95) * np.array([rng.uniform(0.8, 1.1), 1.0])
    shift = rng.uniform(-0.12, 0.12, size=2)
    cos, sin = math.cos(angle), math.sin(angle)
    dark_on_light = rng.random() < 0.5
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    image = Image.new("L", (s, s), paper)
    draw = ImageDraw.Draw(image)
    width = max(2, int(s * rng.uniform(0.05, 0.13)))
    for stroke in DIGITS[label]:
        points = np.asarray(stroke) - 0.5
        points = points + rng.normal(0, 0.02, points.shape)  # a shaky hand
        points[:, 0] += slant * -points[:, 1]
        points = points * zoom
        points = np.stack([points[:, 0] * cos - points[:, 1] * sin, points[:, 0] * sin + points[:, 1] * cos], 1)
        points = (points + 0.5 + shift) * s
        draw.line([tuple(p) for p in points], fill=ink, width=width, joint="curve")
        for x, y in points[[0, -1]]:  # round stroke ends
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    image = image.resize((size, size), Image.LANCZOS)
    noise = rng.normal(0, 6, (size, size))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8), "L")


def line_drawings(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """``n`` grayscale PNG hand-drawn digits; the label is the digit."""
    rng = np.random.default_rng([seed, 2])
    labels = _balanced_labels(n, len(DIGIT_CLASSES), rng)
    files = [_encode(_one_digit(DIGIT_CLASSES[k], rng), "PNG") for k in labels]
    return files, [DIGIT_CLASSES[k] for k in labels]


# --------------------------------------------------------------------------- recoloured crops


def _blob_field(shape, period: float, rng) -> np.ndarray:
    """Smooth random noise at about ``period`` pixels (blurred white noise), in 0..1."""
    h, w = shape
    small = rng.random((max(2, int(h / period * 2)), max(2, int(w / period * 2))))
    field = Image.fromarray((small * 255).astype(np.uint8), "L").resize((w, h), Image.BICUBIC)
    field = np.asarray(field.filter(ImageFilter.GaussianBlur(period / 6)), np.float32) / 255
    return (field - field.min()) / max(1e-6, np.ptp(field))


def _pattern(kind: str, size: int, rng) -> np.ndarray:
    """A 0..1 mask of ``kind`` on a size x size grid (drawn at twice the size, averaged down)."""
    s = 2 * size
    period = rng.uniform(0.12, 0.3) * s
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cx, cy = rng.uniform(0, s, size=2)
    u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / period
    v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / period
    frac_u, frac_v = u - np.floor(u), v - np.floor(v)
    width = rng.uniform(0.25, 0.5)
    if kind == "stripes":
        mask = frac_u < width
    elif kind == "checks":
        mask = (np.floor(u) + np.floor(v)) % 2 == 0
    elif kind == "dots":
        mask = (frac_u - 0.5) ** 2 + (frac_v - 0.5) ** 2 < (width * 0.7) ** 2
    elif kind == "waves":
        mask = np.sin(2 * math.pi * (u + 0.35 * np.sin(2 * math.pi * v * 0.5))) > 0.2
    elif kind == "rings":
        mask = np.sin(2 * math.pi * np.hypot(u, v)) > 0
    elif kind == "blobs":
        mask = _blob_field((s, s), period, rng) > 0.5
    elif kind == "zigzag":
        mask = ((u + 1.2 * np.abs(frac_v - 0.5)) % 1) < 0.5
    elif kind == "grid":
        mask = (frac_u < width * 0.4) | (frac_v < width * 0.4)
    elif kind == "rays":
        mask = np.sin(int(rng.integers(6, 16)) * np.arctan2(v, u)) > 0
    else:  # bricks: rows of rectangles, every other row offset by half a brick
        row = np.floor(v * 2)
        mask = ((frac_v * 2) % 1 < 0.15) | (((u + 0.5 * (row % 2)) % 1) < 0.08)
    small = Image.fromarray((mask * 255).astype(np.uint8), "L").resize((size, size), Image.BOX)
    return np.asarray(small, np.float32) / 255


PATTERN_CLASSES = ["blobs", "bricks", "checks", "dots", "grid", "rays", "rings", "stripes", "waves", "zigzag"]


def _one_texture(kind: str, rng) -> Image.Image:
    size = int(rng.integers(64, 129))
    mask = _pattern(kind, size, rng)[..., None]
    a = np.array(_random_colour(rng), np.float32)
    b = np.array(_random_colour(rng), np.float32)
    for _ in range(8):  # two colours that can be told apart
        if np.abs(a - b).sum() > 150:
            break
        b = np.array(_random_colour(rng), np.float32)
    pixels = a * mask + b * (1 - mask)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1 + rng.uniform(-0.3, 0.3) * xx + rng.uniform(-0.3, 0.3) * yy
    pixels = pixels * light[..., None] * rng.uniform(0.8, 1.15) + rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def recoloured_crops(n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """``n`` JPEG crops of recoloured textures; the label is the pattern type."""
    rng = np.random.default_rng([seed, 3])
    labels = _balanced_labels(n, len(PATTERN_CLASSES), rng)
    files = [_encode(_one_texture(PATTERN_CLASSES[k], rng), "JPEG", rng) for k in labels]
    return files, [PATTERN_CLASSES[k] for k in labels]


# --------------------------------------------------------------------------- registry

CATALOGS = {"colour_objects": colour_objects, "line_drawings": line_drawings, "recoloured_crops": recoloured_crops}
CLASSES = {"colour_objects": OBJECT_CLASSES, "line_drawings": DIGIT_CLASSES, "recoloured_crops": PATTERN_CLASSES}


def generate(name: str, n: int, seed: int = 0) -> tuple[list[bytes], list[str]]:
    """The catalog ``name`` (a key of CATALOGS): ``n`` encoded files and their labels."""
    return CATALOGS[name](n, seed)


def extension(data: bytes) -> str:
    """"jpg" or "png" from a file's first bytes."""
    return "png" if data[:4] == b"\x89PNG" else "jpg"
