"""One controller per concern of the app: chat, models (and jobs), sessions, adapters,
training (``training.py``, which hands on to ``fusing.py`` and ``evaluation.py``; the
child-process watcher they share is ``child_jobs.py``)."""
