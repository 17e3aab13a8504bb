"""Colours of the charts: the CIEDE2000 difference against its published test data, and the palette's
promises (families apart, the same colour for the same name in any chart, a plugin family its own)."""

import itertools

import pandas as pd
import pytest
import seaborn as sns

from harness import registry
from harness.report import charts, colors

# Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1: (L, a, b) pairs and their difference.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


@pytest.mark.parametrize(("lab1", "lab2", "expected"), SHARMA_PAIRS)
def test_ciede2000_matches_the_published_test_pairs(lab1, lab2, expected):
    assert colors.ciede2000(lab1, lab2) == pytest.approx(expected, abs=5e-5)
    assert colors.ciede2000(lab2, lab1) == pytest.approx(expected, abs=5e-5)  # symmetric


def test_srgb_to_lab_of_known_colours():
    """White, black and sRGB red in CIELAB (D65)."""
    assert colors.rgb_to_lab("white") == pytest.approx((100.0, 0.0, 0.0), abs=0.01)
    assert colors.rgb_to_lab("black") == pytest.approx((0.0, 0.0, 0.0), abs=0.01)
    assert colors.rgb_to_lab("#ff0000") == pytest.approx((53.24, 80.09, 67.20), abs=0.02)


# The 21 variants of the committed CPU runs and their families, and a plugin's.
TWENTY_ONE = {
    "vanilla": "vanilla", "flash-sdpa": "flash", "flash-cudnn": "flash", "flash-efficient": "flash",
    "flash-xformers": "flash", "sparse-bigbird": "sparse", "sparse-fixed": "sparse",
    "sparse-strided": "sparse",
    "longformer": "longformer", "longformer-banded": "longformer", "longformer-xformers": "longformer",
    "swa-sinks": "sinks", "swa-learned-sinks": "sinks", "linear": "linear", "performer": "performer",
    "retnet": "retnet", "gla": "gla", "deltanet": "deltanet", "gated-deltanet": "deltanet",
    "mamba": "mamba", "mamba2": "mamba2",
}


def cross_family_distances(drawn: dict[str, str], palette) -> list[tuple[float, str, str]]:
    return sorted((colors.color_distance(palette[a], palette[b]), a, b)
                  for a, b in itertools.combinations(drawn, 2) if drawn[a] != drawn[b])


def test_in_a_chart_of_21_variants_every_two_of_different_families_differ_by_ciede2000_10():
    drawn = {**TWENTY_ONE, "hyena-plugin": "hyena"}
    del drawn["gated-deltanet"]  # 21 variants, one of them a plugin family's
    fig = charts.latency_chart(_points(drawn))
    lines = {ln.get_gid().split(":", 1)[1]: ln for ax in fig.axes for ln in ax.lines
             if (ln.get_gid() or "").startswith("series:")}
    assert set(lines) == set(drawn)
    closest = cross_family_distances(drawn, {n: ln.get_color() for n, ln in lines.items()})[0]
    assert closest[0] >= colors.MIN_FAMILY_DISTANCE, closest


def test_the_distance_check_would_catch_the_old_palette():
    """The check above can fail: husl's evenly spaced hues over 21 names (the palette before families)
    put some variants of different families nearer than 10."""
    names = sorted(TWENTY_ONE)
    old = dict(zip(names, sns.color_palette("husl", len(names)), strict=True))
    assert cross_family_distances(TWENTY_ONE, old)[0][0] < colors.MIN_FAMILY_DISTANCE


def test_every_slot_of_every_known_family_stays_apart_from_every_other_family():
    """Whatever shade and line style a variant draws, it stays 10 apart from any other family's."""
    for a, b in itertools.combinations(registry.family_colors(), 2):
        for s, t in itertools.product(colors.SHADES, repeat=2):
            assert colors.color_distance(colors.shade(registry.family_colors()[a], s),
                                         colors.shade(registry.family_colors()[b], t)) >= 10, (a, s, b, t)


def test_the_same_name_has_the_same_look_whatever_else_is_drawn():
    """Not by order of appearance: a subset, or more variants, leave each variant's colour and style."""
    full = charts.palette(TWENTY_ONE)
    subset = {n: f for n, f in TWENTY_ONE.items() if n in ("flash-sdpa", "mamba", "vanilla")}
    small = charts.palette(dict(reversed(list(subset.items()))))
    for name in subset:
        assert (small[name], small.linestyle[name]) == (full[name], full.linestyle[name])
    within = [(full[n], full.linestyle[n]) for n in TWENTY_ONE if TWENTY_ONE[n] == "flash"]
    assert len(set(within)) == 4  # the flash variants differ from each other in shade or line style


def test_a_plugin_family_gets_a_colour_of_its_own_from_its_name():
    first, again = colors.family_color("hyena"), colors.family_color("hyena")
    assert first == again and colors.family_color("rwkv") != first
    known = [colors.shade(c, s) for c in registry.family_colors().values() for s in colors.SHADES]
    assert min(colors.color_distance(colors.shade(first, s), k) for s in colors.SHADES for k in known) >= 10


def test_the_legend_lists_families_in_their_fixed_order():
    fig = charts.latency_chart(_points({"mamba": "mamba", "vanilla": "vanilla", "zz-plugin": "zz",
                                        "flash-sdpa": "flash", "linear": "linear"}))
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["vanilla", "flash-sdpa", "linear", "mamba", "zz-plugin"]


def test_a_crowded_configuration_splits_into_highlighted_subsets():
    """Above MAX_SERIES_PER_PANEL series, one panel of exact kernels and one of the rest, each with the
    other series in grey."""
    fig = charts.latency_chart(_points(TWENTY_ONE))
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_visible())
    assert titles == ["forward\nfloat32, causal\n" + s for s in sorted(charts.SUBSETS.values())]
    for ax in fig.axes:
        series = {ln.get_gid().split(":")[1] for ln in ax.lines if ln.get_gid().startswith("series:")}
        context = {ln.get_gid().split(":")[1] for ln in ax.lines if ln.get_gid().startswith("context:")}
        assert series and context and series | context == set(TWENTY_ONE) and not series & context
        exact = {s for s in series if TWENTY_ONE[s] in ("vanilla", "flash")}
        assert exact in (set(), {s for s in TWENTY_ONE if TWENTY_ONE[s] in ("vanilla", "flash")})


def _points(families: dict[str, str]) -> pd.DataFrame:
    """Forward float32 causal points of the given variants at three lengths; vanilla and flash exact."""
    rows = []
    for i, (name, family) in enumerate(sorted(families.items())):
        for n in (1024, 2048, 4096):
            rows.append({"config": "cpu, float32, forward, causal", "panel_row": "float32, causal",
                         "panel_col": "forward", "series": name, "variant": name, "family": family,
                         "exact": family in ("vanilla", "flash"), "seq_len": n, "status": "ok",
                         "latency_ms": (1 + i) * n / 1024, "latency_ms_p20": None, "latency_ms_p80": None,
                         "noisy": 0.0})
    return pd.DataFrame(rows)
