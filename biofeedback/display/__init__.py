"""The Qt windows (the only Qt in the project): participant display, experimenter monitor, forms, previews."""
