"""``usvl reproduce``: run an experiment grid resumably and aggregate it into results tables and plots.

A grid is datasets x methods x seeds x few-shot fractions (``configs/reproduce/*.yaml``).
"""
