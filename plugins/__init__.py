"""Custom operators (multi-scale deformable attention). Imports nothing else of this project."""
