"""Data-free fine-tuning: the trainable student, kd and block reconstruction, the step-time model."""
