"""Measurement in ONNX Runtime: sessions, latency, fidelity and accuracy, probes, channel statistics, FGSM."""
