"""Training, evaluating and fusing adapters with mlx-lm's own trainer, evaluator and fuse.

Training runs in a child process (``python -m jobs.child``) that prints one JSON
event per line; ``TrainJob`` (runner.py) starts it, turns the lines back into the events of
``events.py`` and can cancel it, through the one channel every child job uses
(``channel.py``), as ``FuseJob`` does. A crash or an out-of-memory there never takes the app down.
Nothing here imports textual, rich or prompt_toolkit.

    channel.py   ChildJob: spawn, one versioned codec, stderr tail, cancel, out of memory
    config.py    TrainConfig: mlx-lm's lora keys and defaults, PRESETS, from_args/to_mlx_args
    data.py      the data folder's checks (one line per bad record); sessions -> examples
    estimate.py  the memory a run needs, checked before it starts
    folder.py    the adapter folder: staging, the final swap, what a run may overwrite
    runner.py    TrainJob: start (all checks first), poll/events, cancel
    child.py     the child: mlx_lm.lora.train_model with a callback (best, patience)
    events.py    the events, as JSON lines
    evaluate.py  comparing adapters on the engine thread: replies, validation loss
    eval_prompts.py  the prompt file an evaluation answers, checked record by record
    eval_report.py   candidates, reply events, the report and its Markdown/JSON export
    fuse.py      FuseJob: fusing an adapter into a model, in a child process
    fuse_checks.py   what a fuse refuses before it starts (one line, nothing written)
    fuse_events.py   the fuse's events, as JSON lines
    fuse_child.py    the fuse's child: mlx_lm fuse's steps

A finished run's folder: mlx-lm's ``adapters.safetensors`` (the last weights),
``adapter_config.json`` and checkpoints, ``best/`` (an adapter folder with the weights of
the lowest validation loss), ``training.json`` (every reported loss, the best iteration, why
it stopped, the files written) and, for session data, ``data/`` (the jsonl trained on).
"""
