"""A config can be wrong in any way: one line per problem, defaults for what is wrong, the rest
applies. Deep nesting does not crash; a remap never takes another binding's key."""

from __future__ import annotations

from workbench.cli import main
from workbench.config import load_config
from workbench.keymap import check_keymap, known_ids


def test_deeply_nested_config_is_one_line_and_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('model = "x"\na = ' + "[" * 100_000 + "\n")
    config = load_config(path)
    assert config.model == ""  # defaults
    assert len(config.problems) == 1 and "\n" not in config.problems[0]
    assert "nested too deeply" in config.problems[0]


def test_deeply_nested_config_does_not_crash_a_command(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "config"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.toml").write_text("a = " + "[" * 100_000 + "\n")
    monkeypatch.setenv("WORKBENCH_CONFIG_DIR", str(cfg))
    assert main(["sessions", "list"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_one_bad_keys_value_keeps_the_rest(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[keys]\nregenerate = "ctrl+g"\nhelp = 5\nnew-chat = "f6"\n')
    config = load_config(path)
    assert config.keys == {"regenerate": "ctrl+g", "new-chat": "f6"}
    assert len(config.problems) == 1 and "help" in config.problems[0]


def test_a_remap_cannot_take_quit_or_the_palette():
    for key in ("ctrl+q", "Ctrl+Q", "ctrl+p"):
        good, problems = check_keymap({"regenerate": key})
        assert good == {}
        assert len(problems) == 1 and "\n" not in problems[0]
        assert "regenerate" in problems[0] and "refused" in problems[0]
    _good, problems = check_keymap({"regenerate": "ctrl+q"})
    assert "Quit" in problems[0]


def test_conflicts_are_one_line_each_and_the_rest_applies():
    good, problems = check_keymap({
        "regenerate": "ctrl+n",  # swapped with new-chat: fine
        "new-chat": "ctrl+r",
        "help": "f11",
        "settings": "f11",  # help has it first
        "sessions-new": "r",  # Rename's key on the same screen
        "copy-last": "ctrl+c",  # reserved
        "sessions-rename": "ctrl+q",  # Quit is everywhere
    })
    assert good == {"regenerate": "ctrl+n", "new-chat": "ctrl+r", "help": "f11"}
    assert len(problems) == 4 and all("\n" not in p for p in problems)
    assert any(p.startswith("[keys] settings") for p in problems)
    # A screen's own key may reuse an app key (the screen's wins there), as Escape does.
    assert check_keymap({"sessions-new": "ctrl+n"}) == ({"sessions-new": "ctrl+n"}, [])


def test_unknown_id_is_one_short_line():
    good, problems = check_keymap({"x": "f9", "help": "f11"})
    assert good == {"help": "f11"}
    assert problems == ["unknown key binding id 'x' in [keys] (ignored): F1 lists the ids"]
    assert not any(i in problems[0] for i in known_ids())


def test_the_defaults_have_no_conflicts():
    from workbench.keymap import all_bindings

    same = {b.id: b.key for b in all_bindings() if b.id}
    assert check_keymap(same) == (same, [])
