"""One controller per concern of the app: chat, models (and jobs), sessions, adapters."""
