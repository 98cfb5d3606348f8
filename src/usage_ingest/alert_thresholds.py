"""The alert thresholds of `ops/prometheus-alerts.yml`, for what shows them outside
Prometheus (the console highlights a figure past one). A repository test holds the two
in step: change a threshold here and in the rules together."""

from __future__ import annotations

from typing import Final

# UsageIngestLagGrowing: records waiting on a topic.
OFFSET_LAG: Final = 1000
# UsageIngestTimeLagHigh: seconds the oldest waiting record has waited.
TIME_LAG_S: Final = 300.0
# UsageIngestRejectionRateHigh: the share of events refused.
REJECTION_RATIO: Final = 0.05
