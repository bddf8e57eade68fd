"""Training room: datasets and labels, models, ONNX export and parity, MLflow registry, gate."""
