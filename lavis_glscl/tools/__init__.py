"""Command-line tools beside training and evaluation (``python -m lavis_glscl.tools.<name>``)."""
