"""Measuring models and the live pipeline on the machine it runs on."""
