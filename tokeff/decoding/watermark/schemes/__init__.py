"""One module per watermark scheme; each registers its `WatermarkScheme` with `SCHEMES` (see `../scheme.py`)."""
