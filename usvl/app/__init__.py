"""``usvl app``: a browser page (Gradio, the ``app`` extra) showing what ``usvl predict`` gives for a dropped image.

:mod:`usvl.app.predictor` keeps a run's ``usvl predict`` ready (model loaded once) and predicts one file per request
through it; :mod:`usvl.app.ui` draws the page; :mod:`usvl.app.cli` is the command. Importing this package loads
neither torch nor Gradio.
"""
