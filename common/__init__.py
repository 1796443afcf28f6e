"""The foundation every layer stands on: one-line errors and their kinds, number formats,
the progress event, atomic writes, the safetensors header reader and repo ids. It imports
nothing of the project and nothing heavy (no MLX, no UI)."""
