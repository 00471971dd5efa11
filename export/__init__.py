"""mult.export: ONNX export with a parity check, and the Triton model-repository writer."""
