"""Structured pruning (PAODING): channel dependency analysis, ranking criteria, graph surgery, pair-wise dense
pruning, residual-branch (depth) removal, cost models and the target search's measurements."""
