"""Figure of shapes-world samples for results/reference/: per pair the image with its reference mask
(exact masks in image mode, colour pseudo masks in generated mode) and the DAAM and selective heat maps.

Run after `make bench`:
    python scripts/shapes_reference_figure.py <image-mode run dir> <generated-mode run dir> [out.png]
(run dirs are job folders of the two multiruns, e.g. results/runs/multirun_<time>/0 with relevance=hrv).
"""

import sys
from pathlib import Path

from bench.figures import OVERLAYS, load_overlays, overlay_figure

METHODS = ("daam all", "selective k=25%")


def main(image_run: str, generated_run: str, out: str = "results/reference/shapes_samples.png") -> None:
    items = []
    for run, label in ((image_run, "image mode, exact mask"), (generated_run, "generated, colour pseudo mask")):
        overlays = load_overlays(Path(run) / OVERLAYS)
        for item in overlays["items"]:
            maps = {m: item["maps"][m] for m in METHODS}
            items.append({**item, "title": f"{label}: {item['title']}", "maps": maps})
    figure = overlay_figure({"items": items})
    figure.savefig(out, dpi=150, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
