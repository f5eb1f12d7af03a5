"""Shapes world: renderer, captions, colour segmenter, shape check, pipeline and save / load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.shapes.pipeline import TEXT_DIM, build_shapes_pipeline, load_shapes_pipeline, save_shapes_model
from bench.shapes.world import (
    BACKGROUND,
    COLOURS,
    MIN_VISIBLE,
    PALETTE,
    SHAPES,
    VOCABULARY,
    WORLD,
    Scene,
    SceneObject,
    World,
    caption,
    caption_words,
    classify_shape,
    colour_mask,
    render,
    sample_scene,
    shape_mask,
    split_scene,
    word_pseudo_mask,
)
from bench.tokenizer import clip_tokenizer


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_every_word_is_one_clip_token():
    tokenizer = clip_tokenizer()
    for word in (*VOCABULARY, "a", "and"):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    text, words = caption(split_scene("eval", 0))
    n_tokens = len(tokenizer(text).input_ids)
    assert n_tokens == len(text.replace(",", " ,").split()) + 2  # one token per word / comma, + SOT, EOT


@pytest.mark.parametrize("shape", SHAPES)
def test_single_object_mask_is_exactly_its_colour_pixels(shape):
    scene = Scene((SceneObject(shape, "yellow", (0.4, 0.6), 0.45),))
    image, masks = render(scene)
    assert image.shape == (WORLD.size, WORLD.size, 3) and image.dtype == np.uint8
    assert set(masks) == {shape, "yellow"}
    coloured = (image == PALETTE["yellow"]).all(-1)
    assert np.array_equal(masks[shape], coloured)
    assert np.array_equal(masks["yellow"], coloured)
    assert (image[~coloured] == BACKGROUND).all()
    assert coloured.sum() > 20


def test_occlusion_later_objects_cover_earlier_ones():
    back = SceneObject("square", "red", (0.4, 0.4), 0.5)
    front = SceneObject("circle", "blue", (0.6, 0.6), 0.4)
    image, masks = render(Scene((back, front)))
    assert np.array_equal(masks["circle"], shape_mask(front, WORLD.size))
    assert np.array_equal(masks["square"], shape_mask(back, WORLD.size) & ~shape_mask(front, WORLD.size))
    assert not (masks["square"] & masks["circle"]).any()
    assert (shape_mask(back, WORLD.size) & shape_mask(front, WORLD.size)).any()  # they do overlap
    assert np.array_equal(masks["square"], (image == PALETTE["red"]).all(-1))
    assert np.array_equal(masks["circle"], (image == PALETTE["blue"]).all(-1))


def test_sampled_scenes_follow_the_rules():
    counts = set()
    for i in range(100):
        scene = split_scene("train", i)
        counts.add(len(scene.objects))
        shapes = [o.shape for o in scene.objects]
        colours = [o.colour for o in scene.objects]
        assert len(set(shapes)) == len(shapes) and len(set(colours)) == len(colours)
        image, masks = render(scene)
        for obj in scene.objects:
            assert masks[obj.shape].sum() >= MIN_VISIBLE * shape_mask(obj, WORLD.size).sum()
        objects_union = np.zeros((WORLD.size, WORLD.size), bool)
        for obj in scene.objects:
            assert not (objects_union & masks[obj.shape]).any()  # masks of different objects are disjoint
            objects_union |= masks[obj.shape]
        assert np.array_equal(objects_union, (image != BACKGROUND).any(-1))
    assert counts == {1, 2, 3}
    assert split_scene("train", 7) == split_scene("train", 7)
    assert split_scene("train", 7) != split_scene("eval", 7)
    with pytest.raises(ValueError):
        sample_scene(np.random.default_rng(0), n_objects=5)


def test_caption_format_and_words():
    objects = [
        SceneObject("circle", "red", (0.3, 0.3), 0.3),
        SceneObject("square", "blue", (0.7, 0.7), 0.3),
        SceneObject("triangle", "green", (0.3, 0.7), 0.3),
    ]
    assert caption(Scene(tuple(objects[:1]))) == ("a red circle", ["red", "circle"])
    assert caption(Scene(tuple(objects[:2])))[0] == "a red circle and a blue square"
    text, words = caption(Scene(tuple(objects)))
    assert text == "a red circle, a blue square and a green triangle"
    assert words == ["red", "circle", "blue", "square", "green", "triangle"]
    assert caption_words(text) == words


def test_colour_segmenter_recovers_rendered_masks():
    rng = np.random.default_rng(0)
    for i in range(50):
        scene = split_scene("eval", i)
        image, masks = render(scene)
        noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
        for img in (image, noisy):
            for obj in scene.objects:
                assert iou(colour_mask(img, obj.colour), masks[obj.colour]) >= 0.95
        pseudo = word_pseudo_mask(noisy, caption(scene)[1])
        assert set(pseudo) == set(masks)
        for word, mask in pseudo.items():
            assert iou(mask, masks[word]) >= 0.95
    with pytest.raises(ValueError):
        word_pseudo_mask(image, ["circle", "red"])


@pytest.mark.parametrize("world", [WORLD, World(32, 0.28, 0.5, SHAPES)], ids=["default", "every shape, 32 px"])
def test_shape_check_on_isolated_renders(world):
    rng = np.random.default_rng(1)
    correct = 0
    for _ in range(200):
        scene = sample_scene(rng, n_objects=1, world=world)
        _, masks = render(scene, world.size)
        correct += classify_shape(masks[scene.objects[0].shape], world.shapes) == scene.objects[0].shape
    assert correct >= 0.9 * 200
    square = render(Scene((SceneObject("square", "red", (0.5, 0.5), 0.4),)), world.size)[1]["square"]
    square[1, 1] = square[-2, -3] = True  # stray pixels
    assert classify_shape(square, world.shapes) == "square"
    assert classify_shape(np.zeros((world.size, world.size), bool), world.shapes) is None
    wide = np.zeros((world.size, world.size), bool)
    wide[10:13, 4:16] = True
    assert classify_shape(wide, world.shapes) == "bar" and classify_shape(wide.T, world.shapes) == "pillar"


def test_palette_is_well_separated():
    values = np.array([BACKGROUND, *PALETTE.values()], dtype=float)
    dist = np.linalg.norm(values[:, None] - values[None], axis=-1)
    assert dist[~np.eye(len(values), dtype=bool)].min() >= 255
    assert len(COLOURS) == 5 and len(WORLD.shapes) == 4 and set(WORLD.shapes) <= set(SHAPES)


@pytest.fixture(scope="module")
def pipe():
    return build_shapes_pipeline(seed=0)


def test_pipeline_runs_with_and_without_guidance(pipe):
    calls = []
    hook = pipe.unet.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    prompts = ["a red circle", "a blue square and a green cross"]
    try:
        for scale in (2.0, 1.0):
            generators = [torch.Generator().manual_seed(i) for i in range(2)]
            images = pipe(prompts, generators, num_inference_steps=2, guidance_scale=scale)
            assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    finally:
        hook.remove()
    assert len(calls) == 4
    cond = pipe.encode_prompt(prompts)  # (2, 77, D)
    uncond = pipe.encode_prompt(["", ""])
    assert cond.shape == (2, 77, TEXT_DIM)
    assert torch.equal(calls[0], torch.cat([uncond, cond]))  # CFG: unconditional rows first
    assert torch.equal(calls[2], cond)  # no CFG: conditional rows only
    pil = pipe(prompts[:1], torch.Generator().manual_seed(0), num_inference_steps=2, output_type="pil")
    assert pil[0].size == (32, 32)


def test_save_load_round_trip(pipe, tmp_path):
    save_shapes_model(pipe, tmp_path / "model", meta={"step": 0})
    assert next((tmp_path / "model" / "unet").glob("*.safetensors"))
    loaded = load_shapes_pipeline(tmp_path / "model")
    assert loaded.unet.dtype == torch.float32
    reference = build_shapes_pipeline(seed=0)
    reference.unet.half().float()
    reference.text_encoder.half().float()
    prompts = ["a white triangle", "a yellow square"]
    outputs = [
        p(prompts, [torch.Generator().manual_seed(i) for i in range(2)], num_inference_steps=2)
        for p in (reference, loaded)
    ]
    assert np.array_equal(outputs[0], outputs[1])


def test_missing_model_folder_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make train-shapes") as err:
        load_shapes_pipeline(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "\n" not in str(err.value)
