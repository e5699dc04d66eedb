"""Training MobileNet transfer-learning classifiers with Keras (host side)."""
