"""flowgrad's runtime: onnxruntime sessions, the training loop, data, export."""
