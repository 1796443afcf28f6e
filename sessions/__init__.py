"""The session store: TOML transcripts plus safetensors prompt caches (no UI imports)."""
