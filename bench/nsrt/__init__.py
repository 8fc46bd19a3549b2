"""The container runtime's own side of the `ns` tier: what runs in the small zygote process
and in the containers it forks. Import nothing heavy here (no pydantic, no bench.tiers): the
zygote is a fresh `python -S` whose whole point is a small address space, so its forks are
cheap."""
