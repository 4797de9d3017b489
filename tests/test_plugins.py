"""The plugin seam: entry points give commands and named capabilities, loaded on first use;
an absent capability names the extra. These tests need no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from leukoedge import plugins
from leukoedge.errors import DataError, MissingExtraError


def fake_dist(root: Path, name: str, entry: str, modules: dict[str, str]) -> None:
    """An installed distribution ``name`` whose ``leukoedge.plugins`` entry is ``entry``."""
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[leukoedge.plugins]\n{entry}\n")
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(src)


HOOKS = '''
def register_commands(app):
    @app.command(name="hello")
    def hello() -> None:
        print("hello from capplug")

def register_capabilities(register):
    register("doubler", "capplug_impl:double")
    register("broken", "capplug_needs_missing:f")
    register("no_such_attr", "capplug_impl:nothing_here")
    register("direct", lambda x: x + 1)
'''
IMPL = "import sys\nLOADED = True\ndef double(x):\n    return 2 * x\n"
NEEDS_MISSING = "import leukoedge_absent_dependency_xyz\ndef f():\n    pass\n"


@pytest.fixture()
def capplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> plugins.Registry:
    fake_dist(tmp_path, "capplug", "capplug = capplug_mod",
              {"capplug_mod": HOOKS, "capplug_impl": IMPL,
               "capplug_needs_missing": NEEDS_MISSING})
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in ("capplug_mod", "capplug_impl", "capplug_needs_missing"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    return plugins.Registry()


def test_capabilities_are_registered_by_name_and_imported_on_first_lookup(
        capplug: plugins.Registry) -> None:
    names = capplug.names()
    assert {"doubler", "broken", "no_such_attr", "direct"} <= set(names)
    assert names["doubler"] == "capplug"
    assert "capplug_impl" not in sys.modules  # registering imports nothing
    double = capplug.lookup("doubler", "demo", "train")
    assert double(21) == 42 and "capplug_impl" in sys.modules
    assert capplug.lookup("doubler", "demo", "train") is double  # resolved once
    assert capplug.lookup("direct", "demo", "train")(1) == 2


def test_an_absent_capability_names_the_extra(capplug: plugins.Registry) -> None:
    with pytest.raises(MissingExtraError) as e:
        capplug.lookup("teleporter", "demo", "train")
    assert "'leukoedge demo' needs the teleporter of the 'train' extra's plugin" in str(e.value)
    assert "pip install 'leukoedge[train,cpu]'" in str(e.value)
    with pytest.raises(MissingExtraError, match=r"leukoedge\[gpu\]"):
        capplug.lookup("teleporter", "x", "gpu")


def test_a_capability_whose_module_cannot_import_names_what_is_missing(
        capplug: plugins.Registry) -> None:
    with pytest.raises(MissingExtraError) as e:
        capplug.lookup("broken", "bench --checkpoint", "train")
    assert "'leukoedge bench --checkpoint' needs leukoedge_absent_dependency_xyz, which is " \
           "not installed" in str(e.value) and "leukoedge[train" in str(e.value)
    with pytest.raises(MissingExtraError, match="does not exist"):
        capplug.lookup("no_such_attr", "demo", "train")


def test_commands_come_from_the_same_entry_point(capplug: plugins.Registry) -> None:
    app = typer.Typer()

    @app.command(name="noop")
    def noop() -> None:  # a second command so typer keeps subcommand names
        pass

    infos = plugins.load_plugins(app)
    mine = [i for i in infos if i.name == "capplug"]
    assert mine and mine[0].loaded and mine[0].distribution == "capplug"
    r = CliRunner().invoke(app, ["hello"])
    assert r.exit_code == 0 and "hello from capplug" in r.output


OLD_STYLE = """
import typer
from leukoedge.errors import DataError

def register(app):
    @app.command(name="greet")
    def greet(fail: bool = False) -> int:
        if fail:
            raise DataError("no cells here", "give a folder of cells")
        print("greetings")
        return 0

    sub = typer.Typer()

    @sub.command(name="deep")
    def deep() -> int:
        raise DataError("deep trouble")

    app.add_typer(sub, name="grp")
"""


def test_plugin_commands_are_guarded_by_the_loader(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin (here an older one: a plain ``register(app)``) that does not wrap its
    commands in the error guard still gives one line and the error's exit code, never a
    traceback: load_plugins wraps what it added, in sub-groups too."""
    fake_dist(tmp_path, "oldplug", "oldplug = oldplug_mod:register", {"oldplug_mod": OLD_STYLE})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "oldplug_mod", raising=False)
    app = typer.Typer()

    @app.command(name="noop")
    def noop() -> None:  # a second command so typer keeps subcommand names
        pass

    infos = {i.name: i for i in plugins.load_plugins(app)}
    assert infos["oldplug"].loaded and infos["oldplug"].distribution == "oldplug"
    runner = CliRunner()
    ok = runner.invoke(app, ["greet"])
    assert ok.exit_code == 0 and "greetings" in ok.output
    for args in (["greet", "--fail"], ["grp", "deep"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 3, (args, r.output)  # DataError's exit code
        assert not isinstance(r.exception, DataError) and "Traceback" not in r.output
        assert "error:" in r.output
    # a command wrapped already is not wrapped twice
    greet = next(c.callback for c in app.registered_commands if c.name == "greet")
    plugins._guard_commands(app)
    assert next(c.callback for c in app.registered_commands if c.name == "greet") is greet


def test_a_broken_plugin_is_named_when_its_capability_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dist(tmp_path, "badplug", "badplug = badplug_mod_does_not_exist", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = plugins.Registry()
    with pytest.raises(MissingExtraError) as e:
        reg.lookup("teleporter", "demo", "train")
    assert "plugin badplug did not load: cannot import badplug_mod_does_not_exist" \
        in str(e.value)


def test_the_training_plugin_provides_what_the_runtime_uses_without_importing_torch() -> None:
    """Loading the registry imports the plugin's entry module only; looking a capability
    up is what imports torch."""
    code = ("import sys\n"
            "from leukoedge import capabilities, plugins\n"
            "names = plugins.registry().names()\n"
            "assert set(capabilities.KNOWN) <= set(names), names\n"
            "assert all(names[c] == 'train' for c in capabilities.KNOWN), names\n"
            "print('torch' in sys.modules, 'leukoedge_train.plugin' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


TORCH_FREE = ("commands", "commands.train", "commands.export", "commands.cv", "cv", "defaults",
              "recipes", "labels", "registry", "source_paths", "plugin")


def test_the_training_plugins_commands_and_cv_folds_modules_import_without_torch() -> None:
    """``leukoedge --help`` and ``cv folds`` run without torch: the command modules and
    what ``cv folds`` uses import none."""
    code = ("import importlib, sys\n"
            f"for m in {TORCH_FREE!r}:\n"
            "    importlib.import_module('leukoedge_train.' + m)\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"]


@pytest.mark.train
def test_the_training_plugins_capabilities_resolve() -> None:
    pytest.importorskip("torch")
    from leukoedge import capabilities

    assert callable(capabilities.trainer("demo"))
    assert callable(capabilities.exporter("demo"))
    assert callable(capabilities.torch_bench("bench --checkpoint"))


def test_a_plugin_without_hooks_or_with_a_bad_capability_name_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dist(tmp_path, "nohooks", "nohooks = nohooks_mod:THING", {"nohooks_mod": "THING = 3\n"})
    fake_dist(tmp_path, "badname", "badname = badname_mod",
              {"badname_mod": "def register_capabilities(register):\n    register(7, 'x:y')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = plugins.Registry()
    assert 7 not in reg.names()  # type: ignore[comparison-overlap]
    errors = {i.name: i.error for i in reg.infos}
    assert "neither register_commands nor register_capabilities" in str(errors["nohooks"])
    assert "capability name 7 is not a string" in str(errors["badname"])
    infos = {i.name: i for i in plugins.load_plugins(typer.Typer())}
    assert not infos["nohooks"].loaded and infos["badname"].loaded  # it has no commands hook


def test_the_former_entry_point_value_still_gives_both_hooks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata written before 0.2 names ``leukoedge_train.plugin:register``: called, it
    adds the commands; it also carries both hooks, so the capabilities come with it."""
    fake_dist(tmp_path, "zoldtrain", "zoldtrain = leukoedge_train.plugin:register", {})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = plugins.Registry()
    reg.names()
    info = {i.name: i for i in reg.infos}["zoldtrain"]
    assert info.loaded and info.error is None, info.error
    assert sorted(info.capabilities) == ["exporter", "torch_bench", "trainer"]
    from leukoedge_train.plugin import register

    for add in (register, register.register_commands):
        app = typer.Typer()
        add(app)
        assert {"train", "export", "parity"} <= {c.name for c in app.registered_commands}
