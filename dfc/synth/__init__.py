"""Synthetic data: noise sources, the BNS inverter, the torch executor it differentiates through, ORT's
calibration reader, sample files."""
