"""Defaults the command line shows (and the analysis uses), in a module without heavy imports,
so `bench history ...` does not load scipy to print its options."""

ALPHA = 0.05  # significance level of the tests
MIN_EFFECT = 0.02  # a smaller relative change is "same" even when significant
COMPARE_FORMATS = ("table", "json", "markdown", "junit")
