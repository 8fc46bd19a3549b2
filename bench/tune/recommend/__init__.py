"""`bench tune recommend RUN`: which swept settings beat the host's current ones, with evidence.

analysis.py judges the settings (statistics from bench/analysis/stats.py), files.py writes what
an ops person installs and rolls back (TuneD profile, sysctl.d, udev rule, rollback script),
present.py shows the evidence (rows, markdown, the report's HTML from
bench/tune/templates/recommendation.html.j2, autoescaped).

For every cell measured under a setting (tunables differing from the host as found) and its
baseline (the same tier, workload, parameters and cache setup at the settings as found), each
headline metric is compared:

- change = ratio of geometric means - 1, with the 95% CI of Welch's t on log values (the same
  test gives the p-value: a multiplicative effect, robust to the scale of the metric);
- p-values of every comparison in the run are corrected together (Holm by default, or
  Benjamini-Hochberg);
- verdict per comparison: `adopt` (significantly better), `harmful` (significantly worse) or
  `no evidence`; per setting: harmful if any headline metric is harmful, adopt if its primary
  metric is adopt, else no evidence.

A setting goes into the ops files (TuneD profile, sysctl.d, udev rule) only if some workload and
tier adopt it and none finds it harmful; the rollback script writes back what the run's
manifest recorded as found.
"""

from bench.analysis.stats import CORRECTIONS
from bench.tune.recommend.analysis import (
    BASE_CACHE,
    METRICS,
    Comparison,
    Recommendation,
    SettingResult,
    Verdict,
    analyse,
)
from bench.tune.recommend.files import STOCK_PROFILE, write_files
from bench.tune.recommend.present import (
    html_fragment,
    markdown,
    recommendation_html,
    rows,
    setting_text,
)

__all__ = ["BASE_CACHE", "CORRECTIONS", "METRICS", "STOCK_PROFILE", "Comparison", "Recommendation",
           "SettingResult", "Verdict", "analyse", "html_fragment", "markdown",
           "recommendation_html", "rows", "setting_text", "write_files"]
