"""`python -m bench.cli` is the `bench` command."""

from bench.cli.main import main

main()
