"""The app's first start on the demo (issue 10 #10), as a new user gets it: the shipped chat
model answers its suggested prompt in words, and the Adapters pane lists its adapters from
the kit's own folder (no temporary path)."""

from __future__ import annotations

from tests.test_app import last_reply, reply_done, send, until
from workbench.cli import make_args
from workbench.tui.app import WorkbenchApp


async def test_the_demo_answers_and_lists_its_adapters() -> None:
    app = WorkbenchApp(make_args(demo=True, temperature=0.0, max_tokens=40))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.models.ready, "the demo to load", timeout=120)
        await until(pilot, lambda: bool(app.adapters.infos), "the adapters to be listed")
        names = sorted(info.name for info in app.adapters.infos if info.valid)
        assert names == ["brief", "pirate"]
        assert not any(".demo-" in str(info.path) for info in app.adapters.infos)
        await send(pilot, "Hello")
        reply = (await reply_done(pilot, app)).text
        assert "demo model" in reply.lower() and "\ufffd" not in reply
        assert last_reply(app).stats is not None
