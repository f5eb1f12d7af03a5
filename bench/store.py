"""The on-disk format of the generate and segment stages, in one place: every stage writes and reads
their artifacts through these typed stores (verified items, see `bench.cache`).

- `GenerateStore` (`<cache>/generate/<key>/`): `model.json` (the model's geometry), `head_index.json`,
  per sample `samples/<id>.safetensors` (head maps as tensors; token slots, prompt, seed in its JSON metadata)
  and `images/<id>.png`.
- `MaskStore` (`<cache>/segment/<key>/`): per sample `masks/<id>.json` (per word: exclusion reason,
  boxes, scores, mask file) and one `masks/<id>__<word slug>-<word hash>.png` per word with a mask.
- a run's long table: `scores.csv` with `scores.json` (its row count and hash), checked when reported.

Each per-sample item records its sample id; a stage asks `complete(id)` (which checks every item of
the sample and removes invalid ones with a one-line warning) to decide what it still has to compute.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import PIL.Image

from bench.cache import StageStore, sha256, write_atomic


@dataclass(frozen=True)
class Geometry:
    """What the later stages need to know of the model that drew the maps."""

    name: str
    height: int
    width: int
    heatmap_size: int  # side of the common grid the per-head maps are upsampled to (64)
    daam_latent_hw: int  # latent pixels, daam's rule for its default heads


@dataclass
class WordMask:
    """One word's mask at image resolution, or why there is none (the pair is then excluded and counted)."""

    mask: np.ndarray | None  # bool (H, W); None when excluded
    reason: str | None = None  # exclusion reason, e.g. "no detection"; None when mask is set
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (n, 4) xyxy pixels
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))  # (n,)

    def __post_init__(self) -> None:
        if (self.mask is None) == (self.reason is None):
            raise ValueError("WordMask needs exactly one of mask or reason")


def _png(image: PIL.Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class GenerateStore(StageStore):
    """The generate stage's folder: geometry, head index, per-sample maps and images."""

    def __init__(self, root: str | Path, config: Any, inputs: list[str]):
        super().__init__(root, "generate", config, inputs)

    def save_geometry(self, geometry: Geometry) -> None:
        """Written once per key (concurrent runs on one cache never rewrite it under a reader)."""
        if not self.has("model.json") or self.geometry() != geometry:
            self.save_json("model.json", asdict(geometry))

    def geometry(self) -> Geometry:
        return Geometry(**self.load_json("model.json"))

    def complete(self, sample_id: str) -> bool:
        """True when the sample's maps and image are stored and check (invalid ones are removed)."""
        return all([self.has(sample_name(sample_id), sample_id), self.has(f"images/{sample_id}.png", sample_id)])

    def save_sample(self, sample_id: str, record: dict, image: PIL.Image.Image) -> None:
        """The image first, then the maps: a sample counts as stored once both are."""
        self.write(f"images/{sample_id}.png", _png(image), sample_id)
        self.save_maps(sample_id, record)

    def save_maps(self, sample_id: str, record: dict) -> None:
        """`record["maps"]` as safetensors tensors named `<h>x<w>`, the rest of the record as JSON metadata."""
        import safetensors.torch  # here, not at the top: this module stays torch-free at import

        maps = record["maps"]  # {(h, w): (S, H_r, T, h, w)}
        meta = {**{k: v for k, v in record.items() if k != "maps"}, "resolutions": [list(r) for r in maps]}
        data = safetensors.torch.save({f"{h}x{w}": t.contiguous() for (h, w), t in maps.items()},
                                      metadata={"record": json.dumps(meta)})
        self.write(sample_name(sample_id), data, sample_id)

    def sample(self, sample_id: str) -> dict:
        """The stored record: maps {(h, w): (S, H_r, T, h, w)}, words {word: slots}, prompt, seed, ..."""
        import safetensors.torch

        name = sample_name(sample_id)
        data = self.read_or_fail(name, sample_id)
        try:
            tensors = safetensors.torch.load(data)
            header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])  # safetensors: length, JSON
            record = json.loads(header["__metadata__"]["record"])
        except Exception as err:  # safetensors raises its own error types for a malformed header
            raise ValueError(f"{self.file(name)}: not a sample this harness wrote ({type(err).__name__}); delete "
                             "it and rerun") from None
        resolutions = [tuple(r) for r in record.pop("resolutions")]
        return {**record, "maps": {(h, w): tensors[f"{h}x{w}"] for h, w in resolutions}}

    def image(self, sample_id: str) -> PIL.Image.Image:
        return PIL.Image.open(io.BytesIO(self.read_or_fail(f"images/{sample_id}.png", sample_id))).convert("RGB")


def sample_name(sample_id: str) -> str:
    """A sample's maps item in the generate store."""
    return f"samples/{sample_id}.safetensors"


def mask_name(sample_id: str, word: str) -> str:
    """Mask file of one (sample, word): readable slug plus a hash of the word, so no two words share one."""
    slug = "".join(c if c.isalnum() else "_" for c in word)[:40]
    return f"masks/{sample_id}__{slug}-{hashlib.sha256(word.encode()).hexdigest()[:10]}.png"


class MaskStore(StageStore):
    """The segment stage's folder: per sample a JSON of its words and a PNG per word with a mask."""

    def __init__(self, root: str | Path, config: Any, inputs: list[str]):
        super().__init__(root, "segment", config, inputs)

    def complete(self, sample_id: str) -> bool:
        """True when the sample's JSON and every mask it names are stored and check."""
        name = f"masks/{sample_id}.json"
        if not self.has(name, sample_id):
            return False
        for entry in json.loads(self.read(name, sample_id)).values():
            if "png" in entry and not self.has(entry["png"], sample_id):  # warns naming the mask file
                self.discard(name)
                return False
        return True

    def save_masks(self, sample_id: str, per_word: dict[str, WordMask]) -> None:
        """Each word's mask PNG, then the sample's JSON naming them (written last: it marks the sample done)."""
        meta = {}
        for word, wm in per_word.items():
            entry = {"reason": wm.reason, "boxes": wm.boxes.tolist(), "scores": wm.scores.tolist()}
            if wm.mask is not None:
                entry["png"] = mask_name(sample_id, word)
                self.write(entry["png"], _png(PIL.Image.fromarray(wm.mask.astype(np.uint8) * 255)), sample_id)
            meta[word] = entry
        self.save_json(f"masks/{sample_id}.json", meta, sample_id)

    def masks(self, sample_id: str) -> dict[str, WordMask]:
        """{word: WordMask} of one sample, every file checked."""
        out = {}
        for word, entry in self.load_json(f"masks/{sample_id}.json", sample_id).items():
            boxes = np.array(entry["boxes"], np.float32).reshape(-1, 4)
            scores = np.array(entry["scores"], np.float32)
            mask = None
            if "png" in entry:
                mask = np.array(PIL.Image.open(io.BytesIO(self.read_or_fail(entry["png"], sample_id)))) > 127
            out[word] = WordMask(mask, entry["reason"], boxes, scores)
        return out



# --- a run's long table ---------------------------------------------------------------------------------------


def write_table(table: pd.DataFrame, run_dir: Path) -> None:
    """`scores.csv` plus `scores.json` recording its row count and hash (what `read_table` checks)."""
    data = table.to_csv(index=False).encode()
    write_atomic(Path(run_dir) / "scores.csv", data)
    write_atomic(Path(run_dir) / "scores.json", json.dumps({"rows": len(table), "sha256": sha256(data)}).encode())


def read_table(run_dir: Path) -> pd.DataFrame:
    """A run's `scores.csv`, refused in one line when it disagrees with the row count and hash its run recorded."""
    path, record_path = Path(run_dir) / "scores.csv", Path(run_dir) / "scores.json"
    if not record_path.exists():
        raise ValueError(f"{path}: its run recorded no row count and hash ({record_path.name} missing): "
                         "the run did not finish writing it; rerun it")
    record, data = json.loads(record_path.read_text()), path.read_bytes()
    if sha256(data) != record["sha256"]:
        raise ValueError(f"{path}: {len(data)} bytes whose hash disagrees with what its run recorded "
                         f"({record['rows']} rows, {record['sha256'][:12]}): truncated or edited; rerun it")
    # `excluded` / `variant` read as text: mostly empty or numeric-looking, pandas would guess a type per chunk
    table = pd.read_csv(io.BytesIO(data), dtype={"excluded": object, "variant": object})
    if len(table) != record["rows"]:
        raise ValueError(f"{path}: {len(table)} rows disagree with what its run recorded ({record['rows']}); rerun it")
    return table
