"""Exporters: ONNX (with graph cleanup and a parity gate) and TensorRT engines."""
