"""Small utilities without a better home."""
