"""The small core every command stands on: model resolution, artifacts, evaluation, I/O conventions."""
