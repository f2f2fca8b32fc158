"""The names of the built-in models, low in the layers so that the config can list them in its help.

``sdtune.models.presets`` builds them (``tiny``, ``tiny-v``, ``tiny-xl``, ``toy``) and ``sdtune.models.real``
the real-shape ones; this module only names them, and imports nothing.
"""

from __future__ import annotations

# preset name -> (config folder under assets/real, preset whose weight files it shares or None)
REAL_PRESETS: dict[str, tuple[str, str | None]] = {
    "real-sd15": ("sd15", None),
    "real-sd2-base": ("sd2-base", None),
    "real-sd2-768": ("sd2-768", "real-sd2-base"),
    "real-sdxl": ("sdxl", None),
}

PRESETS = ("tiny", "tiny-v", "tiny-xl", "toy", *REAL_PRESETS)
