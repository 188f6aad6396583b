"""Fuzzing of everything that reads untrusted text: location URIs, configuration files.

``test_*.py`` are hypothesis property tests; they run in the normal suite with
the ``ci`` profile (a few thousand inputs per target) and, with
``IMGSTORE_FUZZ_PROFILE=fuzz`` (``tox -e fuzz``), with at least 100,000 inputs
per target. ``fuzz_*.py`` are atheris harnesses run by the same tox env.
"""
