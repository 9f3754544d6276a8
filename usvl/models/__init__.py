"""Encoders, adapters and heads."""
