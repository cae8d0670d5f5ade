"""Quantization: integer formulas, activation-range rules, QDQ emission, bias correction, float-layer choice."""
