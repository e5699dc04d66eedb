"""Keras -> TFLite/LiteRT conversion, quantization and the checks that prove each model."""
