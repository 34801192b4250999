"""Checkpoint -> verified deployable artifact (ONNX with metadata), per target and precision."""
