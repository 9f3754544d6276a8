"""Generator version: bump whenever the output for a given seed changes."""

GENERATOR_VERSION = "1.1.0"
