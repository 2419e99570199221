"""Studies of whether a sharpness measure predicts generalization (theory §6).

The randomized-label study trains many networks on partly shuffled labels, measures each, and
correlates the measures with the generalization gap; :mod:`minsharp.study.report.statistics` holds
the rank correlations and their bootstrap intervals.
"""
