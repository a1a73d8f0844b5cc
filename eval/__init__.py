"""Pure numbers: calibration with guarantees, cost model, curves and their summaries, metrics.

Plots and report files are written only by `eval.plots` and `eval.report`.
"""
