"""Drivers shipped with imgstore, found through the ``imgstore.drivers`` entry points."""
