"""usvl: vision-language foundation models for ultrasound."""
__version__ = "0.1.0"
