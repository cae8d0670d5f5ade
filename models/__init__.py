"""Reference PyTorch models (installed as `dfc.models`) and the export helper that keeps BN."""

from pathlib import Path

DEMO_MODEL = Path(__file__).with_name("digits_cnn.onnx")
