"""The tiers: the contract (base), the registry (registry) and one package or module per tier.

Nothing is imported here: the ns runtime's zygote imports its modules under `python -S`, without
the tier registry and its third-party dependencies."""
