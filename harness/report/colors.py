"""The colour and line style of every variant in every chart: each family a hue, each variant in it a shade
and a line style, the same in every chart and every run.

- A family whose hue is declared (harness.registry.declare_family_colors; the declaration order is the
  legend's) takes that colour. Any other family (a plugin's that declares none) takes a colour derived
  from its name alone: the first of a
  sequence of random colours seeded by a hash of the name whose shades all stay MIN_FAMILY_DISTANCE
  (CIEDE2000) from every shade of the known families. (Two plugin families are apart only by chance.)
- A variant's shade and line style come from a hash of its name, probed on to the next free slot when
  another variant of its family in the same results holds that slot.
No order of appearance enters: the same names give the same colours.

`ciede2000` is the CIE colour difference of Sharma, Wu and Dalal (2005); the tests check it against
their published pairs.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass

import numpy as np
from matplotlib.colors import to_rgb

from harness import registry

# Shades of a family's hue: a blend toward white (> 0) or black (< 0), small enough that a shade stays
# nearer its own family than any other; the line style tells variants of a family apart.
SHADES = (0.0, 0.22, -0.22, 0.4)
LINE_STYLES = ("-", "--", ":", "-.")
SLOTS = [(shade, style) for style in LINE_STYLES for shade in SHADES]
MIN_FAMILY_DISTANCE = 10.0  # CIEDE2000 between variants of different families
# A plugin family's colour: the first of PLUGIN_CANDIDATES random colours (HLS, seeded by its name) that
# keeps its distance from the known families; different names draw different sequences.
PLUGIN_LIGHTNESS, PLUGIN_SATURATION, PLUGIN_CANDIDATES = (0.25, 0.7), (0.45, 1.0), 500


@dataclass(frozen=True)
class Look:
    color: tuple[float, float, float]
    linestyle: str
    family: str


def declared() -> dict[str, str]:
    """family -> hue, as the variant plugins declare them (in the legend's order)."""
    return registry.family_colors()


def family_order(families) -> list[str]:
    """The declared families in their declared order, then any other by name."""
    known = [f for f in declared() if f in set(families)]
    return known + sorted(set(families) - set(declared()))


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def shade(color, amount: float) -> tuple[float, float, float]:
    rgb = np.asarray(to_rgb(color))
    target = 1.0 if amount > 0 else 0.0
    return tuple(float(c) for c in rgb + (target - rgb) * abs(amount))


def _known_shades() -> list[tuple[float, float, float]]:
    return [shade(c, s) for c in declared().values() for s in SHADES]


def family_color(family: str) -> tuple[float, float, float]:
    """A family's base colour: its declared one, else one derived from its name (see the module doc)."""
    if family in declared():
        return to_rgb(declared()[family])
    known = [rgb_to_lab(c) for c in _known_shades()]
    draw = np.random.default_rng(_digest(family))  # the name alone seeds the candidates
    candidates = [colorsys.hls_to_rgb(draw.uniform(), draw.uniform(*PLUGIN_LIGHTNESS),
                                      draw.uniform(*PLUGIN_SATURATION)) for _ in range(PLUGIN_CANDIDATES)]
    for base in candidates:
        shades = [rgb_to_lab(shade(base, s)) for s in SHADES]
        if all(ciede2000(a, b) >= MIN_FAMILY_DISTANCE for a in shades for b in known):
            return base
    return candidates[0]


def looks(families: dict[str, str]) -> dict[str, Look]:
    """name -> its Look, for a mapping of series (or variant) name -> family."""
    found: dict[str, Look] = {}
    for family in family_order(set(families.values())):
        base, taken = family_color(family), set()
        for name in sorted(n for n, f in families.items() if f == family):
            slot = _digest(name) % len(SLOTS)
            while slot in taken and len(taken) < len(SLOTS):
                slot = (slot + 1) % len(SLOTS)
            taken.add(slot)
            amount, style = SLOTS[slot]
            found[name] = Look(shade(base, amount), style, family)
    return found


# --- CIELAB and CIEDE2000 -----------------------------------------------------------------------------

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(color) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB colour (anything matplotlib reads)."""
    rgb = np.asarray(to_rgb(color), float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _SRGB_TO_XYZ @ linear / _D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2]))


def _hue_degrees(b: float, a: float) -> float:
    return 0.0 if a == 0 and b == 0 else math.degrees(math.atan2(b, a)) % 360


def ciede2000(lab1, lab2) -> float:
    """The CIEDE2000 difference of two CIELAB colours (kL = kC = kH = 1)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p, h2p = _hue_degrees(b1, a1p), _hue_degrees(b2, a2p)
    dl, dc = l2 - l1, c2p - c1p
    if c1p * c2p == 0:
        dh = 0.0
    elif abs(h2p - h1p) <= 180:
        dh = h2p - h1p
    else:
        dh = h2p - h1p - 360 if h2p > h1p else h2p - h1p + 360
    dH = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    l_mean, cp_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        h_mean = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        h_mean = (h1p + h2p) / 2
    else:
        h_mean = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(h_mean - 30)) + 0.24 * math.cos(math.radians(2 * h_mean))
         + 0.32 * math.cos(math.radians(3 * h_mean + 6)) - 0.20 * math.cos(math.radians(4 * h_mean - 63)))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    rotation = 30 * math.exp(-(((h_mean - 275) / 25) ** 2))
    r_t = -2 * math.sqrt(cp_mean**7 / (cp_mean**7 + 25**7)) * math.sin(math.radians(2 * rotation))
    return math.sqrt((dl / s_l) ** 2 + (dc / s_c) ** 2 + (dH / s_h) ** 2 + r_t * (dc / s_c) * (dH / s_h))


def color_distance(color1, color2) -> float:
    """CIEDE2000 between two sRGB colours."""
    return ciede2000(rgb_to_lab(color1), rgb_to_lab(color2))
