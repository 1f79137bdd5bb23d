"""Draw a scene with Pillow, deterministically from its seed."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from vlalign.world.scene import GRID, Obj, Scene, rng_for

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
BACKGROUNDS = ((245, 245, 245), (235, 235, 225), (225, 232, 240), (240, 228, 228))


def _star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / points
        out.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return out


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, cx: float, cy: float, r: float,
          background: tuple[int, int, int]) -> None:
    fill = RGB[obj.color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif obj.shape == "heart":
        h = r * 0.5
        draw.ellipse((cx - r, cy - r * 0.8, cx, cy - r * 0.8 + r), fill=fill)
        draw.ellipse((cx, cy - r * 0.8, cx + r, cy - r * 0.8 + r), fill=fill)
        draw.polygon([(cx - r * 0.97, cy - h * 0.2), (cx + r * 0.97, cy - h * 0.2), (cx, cy + r)], fill=fill)
    elif obj.shape == "cross":
        w = r * 0.35
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)], fill=fill)
    elif obj.shape == "moon":
        draw.ellipse(box, fill=fill)
        off = r * 0.55
        draw.ellipse((cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3), fill=background)
    else:
        raise ValueError(f"cannot draw unknown shape {obj.shape!r}")


def render(scene: Scene, size: int = 48) -> Image.Image:
    """Render `scene` at `size` x `size` pixels. Small random jitter keeps objects off a fixed lattice."""
    rng = rng_for(scene.split, scene.seed, salt="render")
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    for obj in scene.objects:
        r = cell * (0.42 if obj.size == "big" else 0.24)
        slack = cell / 2 - r
        cx = (obj.col + 0.5) * cell + float(rng.uniform(-slack, slack)) * 0.8
        cy = (obj.row + 0.5) * cell + float(rng.uniform(-slack, slack)) * 0.8
        _draw(draw, obj, cx, cy, r, background)
    return image
