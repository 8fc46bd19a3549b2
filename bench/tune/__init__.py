"""Kernel tunables and SSD-cache setups: the catalog, safe apply/verify/restore with a journal,
sweeps as a scenario axis, cache device recipes, and recommendations for ops.

Modules: catalog (tuning/tunables.yaml), sysfs (paths under a root, checked), journal (fsynced
originals), tuner (apply/verify/restore), sweep (the scenario's `sweep:` section), cache (device
recipes), hook (what the runner calls), recommend (`bench tune recommend`), cli (`bench tune`).
"""
