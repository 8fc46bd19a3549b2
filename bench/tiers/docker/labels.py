"""The labels every container, network, volume and image bench makes carries (`bench cleanup`
finds what a dead run left by them)."""

RUN_LABEL = "bench.run"
ROLE_LABEL = "bench.role"
