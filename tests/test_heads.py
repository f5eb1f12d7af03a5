import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers import REPO, SHARED_REFERENCE

from bench.heads import HeadIndex
from bench.models import SD14_UNET_CONFIG, SDXL_UNET_CONFIG


def meta_unet(config: dict) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


@pytest.fixture(scope="module")
def sdxl_index() -> HeadIndex:
    return HeadIndex.from_unet(meta_unet(SDXL_UNET_CONFIG), (128, 128))


def test_sdxl_head_counts_and_resolutions(sdxl_index):
    assert len(sdxl_index.layers) == 70 and len(sdxl_index) == 1300
    per_block = {b: sum(h.block == b for h in sdxl_index.heads) for b in ("down", "mid", "up")}
    assert per_block == {"down": 440, "mid": 200, "up": 660}
    # 64x64 maps in the `.1` blocks, 32x32 elsewhere (1024 px)
    for lay in sdxl_index.layers:
        expect = (64, 64) if lay.processor.startswith(("down_blocks.1.", "up_blocks.1.")) else (32, 32)
        assert lay.resolution == expect, lay
    assert sdxl_index.daam_mask(4096).sum() == 1100  # 60 layers without the mid block


def test_sd14_has_128_heads_and_daam_skips_8x8():
    index = HeadIndex.from_unet(meta_unet(SD14_UNET_CONFIG), (64, 64))
    assert len(index) == 128 and index.resolutions == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert index.daam_mask(4096).sum() == 120  # mid block (the only 8x8 layer) excluded


@pytest.mark.parametrize("model, n_heads", [("sd_xl_base_1_0", 1300), ("sd_v1_4", 128)])
def test_names_match_published_hrv_head_order(model, n_heads, sdxl_index):
    path = SHARED_REFERENCE / "hrv" / f"head_index_{model}.npy"
    if not path.exists():
        pytest.skip(f"{path} absent: the published HRV head index lives in ../shared/reference")
    names = [str(n) for n in np.load(path, allow_pickle=True)]
    index = sdxl_index if n_heads == 1300 else HeadIndex.from_unet(meta_unet(SD14_UNET_CONFIG), (64, 64))
    assert len(names) == n_heads
    assert names == index.hrv_names()  # same order, one-to-one
    np.testing.assert_array_equal(index.from_hrv_names(names), np.arange(n_heads))


def test_from_hrv_names_permutation_and_errors(sdxl_index):
    names = sdxl_index.hrv_names()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(names))
    got = sdxl_index.from_hrv_names([names[i] for i in perm])
    np.testing.assert_array_equal(got, perm)
    with pytest.raises(ValueError, match="do not match"):
        sdxl_index.from_hrv_names(names[:-1] + ["down, layer: 99, head: 0"])


def test_daam_order_is_up_down_mid(tiny):
    index = tiny.head_index()
    blocks = [index.heads[i].block for i in index.daam_order()]
    first = {b: blocks.index(b) for b in ("up", "down", "mid")}
    assert first["up"] < first["down"] < first["mid"]
    assert sorted(index.daam_order().tolist()) == list(range(len(index)))


def test_json_roundtrip_and_masks(tiny):
    index = tiny.head_index()
    assert HeadIndex.from_json(index.to_json()) == index
    assert index.mask(["mid"]).sum() == sum(h.block == "mid" for h in index.heads)
    assert index.mask(resolutions=[32]).sum() == len(index.heads_at((32, 32)))
    with pytest.raises(ValueError, match="unknown block"):
        index.mask(["middle"])
    with pytest.raises(ValueError, match="no heads at resolution 7"):
        index.mask(resolutions=[7])


def test_head_index_from_config_equals_the_loaded_models(tiny, tmp_path):
    """The HeadIndex run.py checks values against before the model loads is the loaded model's, for every loader
    it knows: tiny_sdxl, the shapes model, sdxl_random (built on meta here) and a pretrained folder on disk; a
    model in no cache fails in one line naming it."""
    from bench import ModelUnavailableError
    from bench.models import build_sdxl_random, head_index_from_config, load_shapes

    def configured(target: str, **loader) -> HeadIndex:
        return head_index_from_config({"_target_": f"bench.models.{target}", **loader})

    assert configured("build_tiny_sdxl", height=128, width=128) == tiny.head_index()
    assert configured("build_tiny_sdxl", height=256, width=128) != tiny.head_index()  # resolutions follow the size
    path = REPO / "data" / "shapes" / "models" / "seed_0"
    assert configured("load_shapes", path=str(path)) == load_shapes(str(path)).head_index()
    sdxl = configured("build_sdxl_random", height=1024, width=1024)
    assert sdxl == build_sdxl_random(device="meta").head_index() and len(sdxl) == 1300
    tiny.pipe.save_pretrained(tmp_path / "tiny")
    assert configured("load_pretrained", model_id=str(tmp_path / "tiny"), height=128, width=128,
                      local_files_only=True) == tiny.head_index()
    with pytest.raises(ModelUnavailableError, match="model 'nobody/nothing' could not be loaded .*hf download"):
        configured("load_pretrained", model_id="nobody/nothing", height=128, width=128, local_files_only=True)
    assert head_index_from_config({"_target_": "my.own.loader"}) is None  # checked right after it loads
