"""Issue 19 #14: a model fused from the demo chat model and one of its adapters is still the
trained demo, not "random weights, it writes nonsense" (the label went by the folder's name,
which a fused model does not share)."""

from __future__ import annotations

from jobs.fuse import FuseFinished, FuseJob


def test_a_model_fused_from_the_demo_is_labelled_as_the_trained_demo(demo_kit, tmp_path):
    from engine import Engine, ModelLoaded
    from workbench.runtime import demo_label

    fused = tmp_path / "my-pirate"
    job = FuseJob(str(demo_kit.chat), str(demo_kit.chat_adapters / "pirate"), str(fused))
    job.start()
    assert isinstance(job.wait(300), FuseFinished), job.final
    engine = Engine()
    try:
        loaded = engine.load(str(fused)).wait(120)
    finally:
        engine.close()
    assert isinstance(loaded, ModelLoaded)
    info = loaded.info
    assert info.is_demo
    label = demo_label(info)
    assert "trained on a few dozen answers" in label, label
    assert "nonsense" not in label and "random weights" not in label
    assert "random weights" in demo_label(_info(demo_kit.llama))


def _info(path):
    from engine.events import ModelInfo

    return ModelInfo(name=path.name, path=str(path), architecture="llama", num_parameters=1,
                     bits_per_weight=16, weight_bytes=1, context_length=1, load_time_s=0,
                     is_demo=True)
