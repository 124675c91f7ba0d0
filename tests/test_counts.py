"""Counts of the bundled specs against published numbers, and of variants against an
independent hand count from the paper's layer list (Figure 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archc.api import expectation_mismatches, load

ROOT = Path(__file__).parents[1]

PUBLISHED = {  # (trainable, non-trainable): the Xception paper's Table 3 and keras.applications
    "specs/xception.yaml": (22_855_952, 54_528),
    "specs/inception_v3.yaml": (23_626_728, 34_240),
    "specs/inception_v3_slim.yaml": (23_817_352, 34_432),
    "examples/vgg16.yaml": (138_357_544, 0),
    "examples/resnet50.yaml": (25_583_592, 53_120),
    "examples/mobilenet_v1.yaml": (4_231_976, 21_888),
}


@pytest.mark.parametrize("spec", PUBLISHED)
def test_published_counts(spec):
    analysis = load(ROOT / spec)
    assert (analysis.total.trainable, analysis.total.non_trainable) == PUBLISHED[spec]
    assert expectation_mismatches(analysis) == []
    assert analysis.output == (1000,)


def xception_by_hand(middle_repeats=8, segments=None, classes=1000):
    """Figure 5 written out layer by layer: (trainable, non-trainable)."""
    trainable = non_trainable = 0

    def conv(cin, cout, k):
        nonlocal trainable
        trainable += k * k * cin * cout

    def sep(cin, cout):  # 3x3 spatial over `s` channel segments, then 1x1
        nonlocal trainable
        s = cin if segments is None else segments
        trainable += 3 * 3 * (cin // s) * cin + cin * cout

    def bn(c):
        nonlocal trainable, non_trainable
        trainable += 2 * c
        non_trainable += 2 * c

    conv(3, 32, 3), bn(32), conv(32, 64, 3), bn(64)
    for cin, cout in [(64, 128), (128, 256), (256, 728)]:
        sep(cin, cout), bn(cout), sep(cout, cout), bn(cout), conv(cin, cout, 1), bn(cout)
    for _ in range(middle_repeats * 3):
        sep(728, 728), bn(728)
    sep(728, 728), bn(728), sep(728, 1024), bn(1024), conv(728, 1024, 1), bn(1024)
    sep(1024, 1536), bn(1536), sep(1536, 2048), bn(2048)
    trainable += 2048 * classes + classes
    return trainable, non_trainable


def test_hand_count_reproduces_the_paper():
    assert xception_by_hand() == (22_855_952, 54_528)


@pytest.mark.parametrize(
    "overrides, hand",
    [
        ({"middle_repeats": "4"}, {"middle_repeats": 4}),
        ({"segments": "4"}, {"segments": 4}),
        ({"segments": "1", "classes": "10"}, {"segments": 1, "classes": 10}),
    ],
)
def test_variants_match_the_hand_count(overrides, hand):
    analysis = load(ROOT / "specs/xception.yaml", overrides)
    assert (analysis.total.trainable, analysis.total.non_trainable) == xception_by_hand(**hand)


def test_ablations_change_counts_as_the_paper_describes():
    base = load(ROOT / "specs/xception.yaml").total
    no_residual = load(ROOT / "specs/xception.yaml", {"residual": "false"}).total
    shortcuts = [(64, 128), (128, 256), (256, 728), (728, 1024)]
    assert base.trainable - no_residual.trainable == sum(cin * cout + 2 * cout for cin, cout in shortcuts)
    between = load(ROOT / "specs/xception.yaml", {"between": "elu"}).total
    assert between == base  # an activation adds no parameters
    fc = load(ROOT / "specs/xception.yaml", {"fc_layers": "true"}).total
    assert fc.trainable - base.trainable == 2048 * 4096 + 4096 + 4096 * 4096 + 4096 + (4096 - 2048) * 1000


def test_macs_of_a_conv_by_hand(tmp_path):
    spec = tmp_path / "one.yaml"
    spec.write_text("name: one\ninput: [10, 12, 4]\nflows:\n  main:\n    - conv: {filters: 6, kernel: [3, 5], stride: 2, padding: same}\n")
    analysis = load(spec)
    assert analysis.output == (5, 6, 6)
    assert analysis.total.trainable == 3 * 5 * 4 * 6 + 6
    assert analysis.total.macs == 5 * 6 * 6 * (3 * 5 * 4)


def test_xception_macs_by_hand():
    """Multiply-adds of Figure 5 at 299x299, summed layer by layer."""
    macs = 0
    macs += 149 * 149 * 32 * 27 + 147 * 147 * 64 * 9 * 32
    for cin, cout, n, m in [(64, 128, 147, 74), (128, 256, 74, 37), (256, 728, 37, 19)]:
        macs += n * n * (9 * cin + cin * cout) + n * n * (9 * cout + cout * cout) + m * m * cin * cout
    macs += 8 * 3 * 19 * 19 * (9 * 728 + 728 * 728)
    macs += 19 * 19 * (9 * 728 + 728 * 728) + 19 * 19 * (9 * 728 + 728 * 1024) + 10 * 10 * 728 * 1024
    macs += 10 * 10 * (9 * 1024 + 1024 * 1536) + 10 * 10 * (9 * 1536 + 1536 * 2048) + 2048 * 1000
    assert load(ROOT / "specs/xception.yaml").total.macs == macs


def test_large_repeat_counts_compile_fast():
    import time

    start = time.perf_counter()
    analysis = load(ROOT / "specs/xception.yaml", {"middle_repeats": "1000"})
    assert time.perf_counter() - start < 5
    assert analysis.total.trainable == xception_by_hand(middle_repeats=1000)[0]
