"""Model management: find, download, describe, quantize and build models.

Nothing here needs the engine thread except what runs MLX (quantizing, building the demo
kit's weights): give those to ``Engine.submit``. The rest (resolving a name to a folder,
the Hugging Face download, the catalog of models on disk, reading safetensors headers) is
file and network work that any thread may do.
"""
