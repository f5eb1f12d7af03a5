"""Shapes world: random scenes of flat coloured shapes on black, exact per-word masks and captions.

Every scene holds 1-3 objects; within a scene each shape word and each colour word occurs at most
once, so every caption word names exactly one object. Rasterisation samples pixel centres only (no
antialiasing): an object's pixels carry exactly its palette colour and the masks are exact.

Splits: scene ``i`` of a split is drawn from ``numpy.random.default_rng((SPLIT_SEEDS[split], i))``;
train (0) and eval (1) seed streams are disjoint. (colour, shape) combinations are not held out.

A `World` is the image side, the range of object sides and the shapes drawn (a subset of the catalogue SHAPES); a
trained model records the world it was trained on in its shapes_model.json (`load_world`), so its eval set and
fidelity checks render the same world. The default world (24 px, objects 35-60% of the side, square / triangle /
bar / pillar) is the one the shipped models learn on two CPU cores: shapes whose silhouettes differ at low spatial
frequency (results/reference/shapes_recipe_study.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "bar", "pillar")  # every shape a world may draw
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
VOCABULARY: tuple[str, ...] = COLOURS + SHAPES
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
SPLIT_SEEDS: dict[str, int] = {"train": 0, "eval": 1}

MIN_VISIBLE = 0.6  # fraction of an object's own area that must stay visible
CROSS_ARM = 1 / 3  # cross arm width / object side
BAR_WIDTH = 1 / 3  # bar height / object side (a bar spans the side horizontally, a pillar vertically)
COLOUR_MAX_DIST = 160.0  # colour_mask: max RGB distance to the palette value


@dataclass(frozen=True)
class World:
    """A shapes world: the image side in pixels, the range of object sides as fractions of it and the shapes it
    draws (from SHAPES; every colour of PALETTE is used)."""

    size: int = 24
    min_size: float = 0.35
    max_size: float = 0.6
    shapes: tuple[str, ...] = ("square", "triangle", "bar", "pillar")

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(self.shapes))  # from JSON lists
        unknown = sorted(set(self.shapes) - set(SHAPES))
        if unknown or len(set(self.shapes)) < 3:
            raise ValueError(f"a world draws >= 3 distinct shapes of {SHAPES}, got {self.shapes}")
        if self.size < 8 or self.size % 4:
            raise ValueError(f"world size must be a multiple of 4 and >= 8 px, got {self.size}")
        if not 0 < self.min_size <= self.max_size < 1:
            raise ValueError(f"object sizes need 0 < min_size <= max_size < 1, got {self.min_size}, {self.max_size}")

    def area_range(self) -> tuple[float, float]:
        """Plausible visible area of one object as a fraction of the image (generated-mode fidelity): half the
        smallest visible triangle, 1.5x the largest square."""
        return 0.5 * MIN_VISIBLE * self.min_size**2 * 0.5, 1.5 * self.max_size**2

    def as_dict(self) -> dict:
        return {**asdict(self), "shapes": list(self.shapes)}


WORLD = World()  # the shipped models' world


def load_world(model_folder: str | Path) -> World:
    """The world a shapes model was trained on, from its shapes_model.json."""
    meta_path = Path(model_folder) / "shapes_model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no shapes model at {model_folder}: run `make train-shapes` to train one")
    meta = json.loads(meta_path.read_text())
    if "world" not in meta:
        raise ValueError(f"{meta_path} names no world (a model from an older trainer): retrain it with "
                         "`make train-shapes`")
    return World(**meta["world"])


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    centre: tuple[float, float]  # (x, y) in [0, 1] image units, y pointing down
    size: float  # side of the bounding box in image units


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # drawing order: later objects occlude earlier ones


def shape_mask(obj: SceneObject, size: int) -> np.ndarray:
    """Full (unoccluded) bool (size, size) mask of one object, sampled at pixel centres."""
    coords = (np.arange(size) + 0.5) / size
    dx = coords[None, :] - obj.centre[0]  # (1, W)
    dy = coords[:, None] - obj.centre[1]  # (H, 1)
    r = obj.size / 2
    if obj.shape == "circle":
        return dx**2 + dy**2 <= r**2
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "triangle":  # apex up, base down
        half_width = (dy + r) / 2  # 0 at the apex, r at the base
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= half_width)
    if obj.shape == "cross":
        arm = r * CROSS_ARM
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    if obj.shape == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r * BAR_WIDTH)
    if obj.shape == "pillar":
        return (np.abs(dx) <= r * BAR_WIDTH) & (np.abs(dy) <= r)
    raise ValueError(f"unknown shape {obj.shape!r}; known: {SHAPES}")


def visible_masks(scene: Scene, size: int) -> list[np.ndarray]:
    """Per-object bool (size, size) masks of visible pixels, in scene order."""
    full = [shape_mask(obj, size) for obj in scene.objects]
    visible = []
    for i, mask in enumerate(full):
        covered = np.zeros_like(mask)
        for later in full[i + 1 :]:
            covered |= later
        visible.append(mask & ~covered)
    return visible


def render(scene: Scene, size: int = WORLD.size) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Image uint8 (size, size, 3) and word -> bool (size, size) mask of the visible object pixels.

    The shape word and the colour word of an object share the object's mask.
    """
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    masks: dict[str, np.ndarray] = {}
    for obj, mask in zip(scene.objects, visible_masks(scene, size)):
        image[mask] = PALETTE[obj.colour]
        masks[obj.shape] = mask
        masks[obj.colour] = mask
    return image, masks


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, world: World = WORLD) -> Scene:
    """Random scene of n_objects (default: uniform in 1..3) with distinct shapes and colours.

    Positions and sizes are resampled until every object keeps >= MIN_VISIBLE of its area
    (measured at the world's image size).
    """
    if n_objects is None:
        n_objects = int(rng.integers(1, 4))
    if not 1 <= n_objects <= min(len(world.shapes), len(COLOURS)):
        raise ValueError(f"n_objects must be in 1..{min(len(world.shapes), len(COLOURS))}, got {n_objects}")
    shapes = rng.choice(len(world.shapes), n_objects, replace=False)
    colours = rng.choice(len(COLOURS), n_objects, replace=False)
    while True:
        objects = []
        for s, c in zip(shapes, colours):
            side = float(rng.uniform(world.min_size, world.max_size))
            centre = (float(rng.uniform(side / 2, 1 - side / 2)), float(rng.uniform(side / 2, 1 - side / 2)))
            objects.append(SceneObject(world.shapes[s], COLOURS[c], centre, side))
        scene = Scene(tuple(objects))
        visible = visible_masks(scene, world.size)
        if all(v.sum() >= MIN_VISIBLE * shape_mask(o, world.size).sum() for o, v in zip(objects, visible)):
            return scene


def split_scene(split: str, index: int, world: World = WORLD) -> Scene:
    """Scene ``index`` of the 'train' or 'eval' split of `world` (disjoint seed streams)."""
    return sample_scene(np.random.default_rng((SPLIT_SEEDS[split], index)), world=world)


def caption(scene: Scene) -> tuple[str, list[str]]:
    """('a red circle, a blue square and a green triangle', target words in caption order)."""
    phrases = [f"a {obj.colour} {obj.shape}" for obj in scene.objects]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    words = [w for obj in scene.objects for w in (obj.colour, obj.shape)]
    return text, words


def caption_words(text: str) -> list[str]:
    """Vocabulary words of a caption, in order."""
    return [w for w in text.replace(",", " ").split() if w in VOCABULARY]


def colour_mask(image: np.ndarray, colour_word: str) -> np.ndarray:
    """Bool (H, W) mask of pixels whose nearest palette entry (background included) is the colour.

    Pixels farther than COLOUR_MAX_DIST from every palette value are left out.
    """
    names = ["background", *COLOURS]
    palette = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)  # (K, 3)
    dist = np.linalg.norm(image[:, :, None, :].astype(np.float32) - palette, axis=-1)  # (H, W, K)
    nearest = dist.argmin(-1)  # (H, W)
    return (nearest == names.index(colour_word)) & (dist.min(-1) <= COLOUR_MAX_DIST)


def word_pseudo_mask(image: np.ndarray, words: Sequence[str]) -> dict[str, np.ndarray]:
    """Word -> bool (H, W) mask from colour segmentation of an image (e.g. a generated one).

    ``words`` are the caption's vocabulary words in order (see caption_words); each shape word gets
    the mask of the colour word just before it.
    """
    masks: dict[str, np.ndarray] = {}
    colour = None
    for word in words:
        if word in PALETTE:
            colour = word
            masks[word] = colour_mask(image, word)
        elif word in SHAPES:
            if colour is None:
                raise ValueError(f"shape word {word!r} has no colour before it in {list(words)}")
            masks[word] = masks[colour]
    return masks


FILL = {"square": 1.0, "circle": np.pi / 4, "cross": 1 - 4 * (0.5 - CROSS_ARM / 2) ** 2}  # box fill, symmetric shapes


def classify_shape(mask: np.ndarray, shapes: Sequence[str] = WORLD.shapes) -> str | None:
    """The shape of `shapes` a bool (H, W) object mask looks like, from bounding-box features; None if empty.

    Only the largest 4-connected component counts (stray pixels of generated images drop out). Bars are at least
    twice as wide as tall, pillars the reverse; triangles are bottom-heavy; the symmetric shapes go by how much of
    their box they fill (squares ~1.0, circles ~0.79, crosses ~0.56).
    """
    labels, n = ndimage.label(mask)  # (H, W) int, 0 = outside
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]  # (n,)
    mask = labels == 1 + sizes.argmax()
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = box.shape
    if "bar" in shapes and width >= 2 * height:
        return "bar"
    if "pillar" in shapes and height >= 2 * width:
        return "pillar"
    top = box[: height // 2].sum()
    bottom = box[height - height // 2 :].sum()
    if "triangle" in shapes and top < 0.6 * bottom:
        return "triangle"
    symmetric = [shape for shape in shapes if shape in FILL]
    return min(symmetric, key=lambda shape: abs(FILL[shape] - box.mean())) if symmetric else None
