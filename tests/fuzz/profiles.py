"""Hypothesis settings profiles for the fuzz targets, chosen by ``IMGSTORE_FUZZ_PROFILE``.

* ``ci`` (default): 1,000 inputs per target, fast enough for every run (2,000 took
  125 s of the 2-core CI run's time; the deep run is ``fuzz``).
* ``fuzz``: 100,000 inputs per target (``tox -e fuzz``).
* ``smoke``: a few hundred, for a quick local check.

Each target is decorated with ``@FUZZ`` rather than loading a profile
globally, so other hypothesis tests in the same session keep their settings.
The number of inputs can be overridden with ``IMGSTORE_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
    "database": None,
    "print_blob": True,
}
settings.register_profile("imgstore-smoke", max_examples=300, **_COMMON)
settings.register_profile("imgstore-ci", max_examples=1_000, **_COMMON)
settings.register_profile(
    "imgstore-fuzz",
    max_examples=100_000,
    # no shrinking budget worry: a failure still shrinks; explicit phases keep
    # the run from replaying a database it does not have
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    **_COMMON,
)

PROFILE = os.environ.get("IMGSTORE_FUZZ_PROFILE", "ci").strip() or "ci"
if f"imgstore-{PROFILE}" not in ("imgstore-smoke", "imgstore-ci", "imgstore-fuzz"):
    raise ValueError(f"IMGSTORE_FUZZ_PROFILE must be smoke, ci or fuzz, not {PROFILE!r}")

_chosen = settings.get_profile(f"imgstore-{PROFILE}")
_examples = os.environ.get("IMGSTORE_FUZZ_EXAMPLES", "").strip()
FUZZ = settings(_chosen, max_examples=int(_examples)) if _examples else _chosen
"""The settings every fuzz target uses."""


def scaled(fraction: float) -> settings:
    """``FUZZ`` with a fraction of its inputs, for targets whose every input is slow.

    Never used for the 100,000-input guarantee: in the ``fuzz`` profile the
    count stays at least 100,000.
    """
    count = max(50, int(FUZZ.max_examples * fraction))
    if PROFILE == "fuzz":
        count = max(count, 100_000)
    return settings(FUZZ, max_examples=count)
