"""The shapes world inside the harness: eval sets, colour pseudo-GT, fidelity, chance baselines, and the
shipped checkpoint's image-mode heat maps against exact masks."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import REPO

from bench.evaluate import CentredDisc, Context, OtherWord
from bench.shapes.evalset import write_eval_set
from bench.shapes.pseudo_gt import ColourSegmenter, fidelity
from bench.shapes.world import SHAPES, WORLD, World, caption, load_world, render, split_scene

SHIPPED = REPO / "data" / "shapes" / "models" / "seed_0"


def test_eval_set_rows_carry_exact_masks(tmp_path):
    path = Path(write_eval_set(str(tmp_path), n_scenes=5, model=str(SHIPPED), first=3))
    assert write_eval_set(str(tmp_path), n_scenes=5, model=str(SHIPPED), first=3) == str(path)  # rendered once
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"eval{i:05d}" for i in range(3, 8)]
    for row, i in zip(rows, range(3, 8)):
        image, masks = render(split_scene("eval", i, load_world(SHIPPED)), load_world(SHIPPED).size)
        assert row["prompt"] == caption(split_scene("eval", i))[0]
        assert np.array_equal(np.asarray(PIL.Image.open(path.parent / row["image"])), image)
        for word in row["words"]:
            assert np.array_equal(np.asarray(PIL.Image.open(path.parent / row["masks"][word])) > 127, masks[word])


def test_eval_set_renders_the_world_its_model_was_trained_on(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    world = World(32, 0.28, 0.5, ("circle", "square", "triangle", "cross"))
    (model / "shapes_model.json").write_text(json.dumps({"world": world.as_dict()}))
    path = Path(write_eval_set(str(tmp_path / "sets"), n_scenes=3, model=str(model)))
    row = json.loads(path.read_text().splitlines()[2])
    assert np.array_equal(np.asarray(PIL.Image.open(path.parent / row["image"])),
                          render(split_scene("eval", 2, world), 32)[0])
    assert split_scene("eval", 2, world) != split_scene("eval", 2)  # other sizes than the default world
    (model / "shapes_model.json").write_text("{}")
    with pytest.raises(ValueError, match="names no world.*retrain"):
        write_eval_set(str(tmp_path / "other"), n_scenes=3, model=str(model))


def test_fidelity_accepts_renders_and_rejects_wrong_drawings():
    scenes = [split_scene("eval", i) for i in range(40)]
    assert all(fidelity(PIL.Image.fromarray(render(s)[0]), caption(s)[0])["faithful"] for s in scenes)
    blank = PIL.Image.new("RGB", (WORLD.size, WORLD.size))
    assert not fidelity(blank, "a red triangle")["faithful"]
    square = np.zeros((WORLD.size, WORLD.size, 3), np.uint8)
    square[6:18, 6:18] = (255, 0, 0)
    assert fidelity(PIL.Image.fromarray(square), "a red square")["faithful"]
    assert not fidelity(PIL.Image.fromarray(square), "a red triangle")["faithful"]  # right colour, wrong shape


def test_colour_segmenter_pairs_shape_with_its_colour():
    scene = split_scene("eval", 1)
    image, masks = render(scene)
    text, words = caption(scene)
    out = ColourSegmenter().segment([PIL.Image.fromarray(image)], [words], [{"prompt": text}])[0]
    for word in words:
        assert np.array_equal(out[word].mask, masks[word])


def test_chance_baselines(tiny):
    index = tiny.head_index()
    disc = CentredDisc(radius=0.25).heat_maps(torch.zeros(len(index), 32, 32), "w", None)["r=0.25"][1]
    assert disc[16, 16] == 1 and disc[0, 0] == 0 and abs(disc.mean() - np.pi / 16) < 0.02
    maps = {"circle": torch.rand(len(index), 8, 8), "red": torch.rand(len(index), 8, 8),
            "square": torch.rand(len(index), 8, 8)}
    left, right = torch.zeros(32, 32, dtype=torch.bool), torch.zeros(32, 32, dtype=torch.bool)
    left[:, :16], right[:, 16:] = True, True
    ctx = Context(index, tiny.daam_latent_hw, None, 8, maps, {"circle": left, "red": left, "square": right})
    other = OtherWord().heat_maps(maps["circle"], "circle", ctx)["daam heads"][1]
    daam_heads = torch.from_numpy(index.daam_mask(tiny.daam_latent_hw))
    torch.testing.assert_close(other, maps["square"][daam_heads].mean(0))  # not "red": same object
    alone = Context(index, tiny.daam_latent_hw, None, 8, maps, {"circle": left, "red": left})
    assert torch.isnan(OtherWord().heat_maps(maps["circle"], "circle", alone)["daam heads"][1]).all()


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory):
    """Image mode with the shipped checkpoint on 32 fixed eval renders (never used in training):
    per shape word, its per-head maps (H, 32, 32), its exact mask and another object's mask (or None)."""
    from bench.aggregate import word_head_maps
    from bench.generate import generate_stage
    from bench.models import load_shapes
    from bench.prompts import load_prompt_set, token_positions
    from bench.samples import make_samples
    from bench.store import GenerateStore

    model = load_shapes(str(SHIPPED))
    rows = load_prompt_set(write_eval_set(str(tmp_path_factory.mktemp("eval")), n_scenes=32, model=str(SHIPPED),
                                          first=500))
    samples = make_samples(rows, [0], token_positions(model.tokenizer, rows))
    store = GenerateStore(tmp_path_factory.mktemp("stages"), {"shipped": 1}, [])
    generate_stage(model, samples, store, steps=10, guidance_scale=1.0, batch_size=32, source="image")
    index = model.head_index()
    pairs = []
    for sample, row in zip(samples, rows):
        stored = store.sample(sample.id)
        masks = {w: torch.from_numpy(np.asarray(PIL.Image.open(p)) > 127) for w, p in row.extra["masks"].items()}
        shapes = [w for w in row.words if w in SHAPES]
        for word in shapes:
            head_maps = word_head_maps(stored["maps"], index, stored["words"][word], model.height)
            pairs.append((head_maps, masks[word], next((masks[w] for w in shapes if w != word), None)))
    return pairs


def test_shipped_checkpoint_heat_maps_find_their_objects(shipped_run):
    """Heads chosen on the first half of the renders must find the objects of the second half.

    Catches a transposed map, a wrong token index or a misordered head: each makes the held-out IoU of
    the chosen heads fall to the level of a rotated map or of another object's mask."""
    from bench.score import heat_to_mask, iou

    calibration, held_out = shipped_run[: len(shipped_run) // 2], shipped_run[len(shipped_run) // 2:]
    size = tuple(calibration[0][1].shape)
    per_head = np.nanmean([iou(heat_to_mask(h, size, 0.4), m).numpy() for h, m, _ in calibration], axis=0)
    top = torch.from_numpy(np.argsort(-per_head)[:4].copy())

    def miou(transform=lambda heat: heat, other=False):
        return float(np.mean([iou(heat_to_mask(transform(h[top].mean(0)), size, 0.4), o if other else m)
                              for h, m, o in held_out if not other or o is not None]))

    correct = miou()
    rotated = miou(transform=lambda heat: heat.T.flip(0))
    wrong_object = miou(other=True)  # the word's map scored against another object's mask
    print(f"held-out IoU of the 4 calibration-best heads: {correct:.3f}, rotated {rotated:.3f}, "
          f"other object {wrong_object:.3f}")
    assert correct > rotated + 0.05, (correct, rotated)
    assert correct > wrong_object + 0.05, (correct, wrong_object)
