"""Generator version: bump whenever the output for a given seed changes."""

# 1.1.0 also covers the ln-int, ln-ext and prostate presets and the convex probe: they were added without changing
# the thyroid and breast output for any seed (golden hashes in tests/test_synthetic_generator.py), so no cached
# dataset of 1.1.0 went stale.
# 1.2.0: the prostate preset got a harder, more ambiguous gland boundary (capsule dropout, gland-like periprostatic
# cuff, edge shadows, partial-volume blur, depth fade, more varied outline); thyroid, breast, ln-int and ln-ext output
# is unchanged (golden hashes), but the cache folder name changes for every preset. Bump on the next output change.
# Acquisition profiles (acquisition.py) were added at 1.2.0 without changing any preset's default output (golden
# hashes): a shifted dataset's cache folder carries the profile's name and a hash of its settings instead.
GENERATOR_VERSION = "1.2.0"
