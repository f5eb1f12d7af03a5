"""Generated mode's fidelity analysis (bench.analyses.fidelity): the colour segmenter's validity check."""

from bench.analyses.fidelity import colour_segmenter_agreement


def test_colour_segmenter_recovers_rendered_masks():
    assert colour_segmenter_agreement(50) >= 0.95
