"""MLX Workbench: the Textual app and the command line, built on ``engine`` and ``sessions``."""

__version__ = "0.1.0"
