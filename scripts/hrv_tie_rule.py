"""How often a tie rule reproduces HRV's published SDXL top-k head lists from its published vectors.

HRV publishes, per concept, the top-k heads of SDXL at some k (`final_result/head_roles_ba_..._top_<k>_..._sd_xl_
base_1_0.csv`) beside the vectors they come from. Heads with equal relevance can be taken in any order; this
counts the (concept, k) cases whose published head *set* equals the top k by each rule: lower HeadIndex position
first among ties (`bench.aggregate.ranked_heads`, this harness's rule) and higher position first.

    python scripts/hrv_tie_rule.py <folder with HRV's final_result files> [vectors.npy head_names.npy]

The vectors and head names default to `../shared/reference/hrv/` (the published files). Nothing is written.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "hrv"


def top_set(vector: np.ndarray, k: int, lower_first: bool) -> set[int]:
    """Indices of the k largest values; among equal values the lower (or higher) index first."""
    index = np.arange(len(vector))
    order = np.lexsort((index if lower_first else -index, -vector))
    return set(order[:k].tolist())


def main() -> None:
    folder = Path(sys.argv[1])
    vectors = np.load(sys.argv[2] if len(sys.argv) > 2 else REFERENCE / "category_vectors_sd_xl_base_1_0.npy")
    names = [str(n) for n in np.load(sys.argv[3] if len(sys.argv) > 3
                                     else REFERENCE / "head_index_sd_xl_base_1_0.npy")]
    position = {n: i for i, n in enumerate(names)}
    counts = {"lower index first": 0, "higher index first": 0}
    cases, ks = 0, []
    for path in sorted(folder.glob("*_top_*_sd_xl_base_1_0.csv")):
        k = int(re.search(r"_top_(\d+)_", path.name).group(1))
        ks.append(k)
        table = pd.read_csv(path)
        for c, listed in enumerate(table["Head position"]):  # row c: the vectors' concept c (HRV's order)
            published = {position[n] for n in ast.literal_eval(listed.replace("' '", "', '"))}
            assert len(published) == k, (path.name, c, len(published))
            cases += 1
            counts["lower index first"] += top_set(vectors[c], k, True) == published
            counts["higher index first"] += top_set(vectors[c], k, False) == published
    print(f"published SDXL top-k lists at k = {sorted(ks)}; {cases} (concept, k) cases")
    for rule, n in counts.items():
        print(f"  {rule}: the same head set in {n} of {cases}")


if __name__ == "__main__":
    main()
