"""The shim that runs LAVIS's own scripts with GLSCL registered, in this process."""
import json
import sys
import textwrap

import pytest


def test_run_lavis_script_runs_the_script_as_python_would(tmp_path, monkeypatch, capsys):
    from lavis_glscl import run_lavis_script

    script = tmp_path / "clone" / "probe.py"
    (script.parent / "lavis").mkdir(parents=True)
    # A clone's own lavis/ beside the script would not hold the registrations: it must not be the one imported.
    (script.parent / "lavis" / "__init__.py").write_text("raise ImportError('the clone copy was imported')\n")
    script.write_text(textwrap.dedent("""
        import json, os, sys
        from lavis.common.registry import registry
        with open(sys.argv[-1], "w") as handle:
            json.dump({"name": __name__, "argv": sys.argv, "path0": sys.path[0],
                       "offline": os.environ["HF_HUB_OFFLINE"],
                       "glscl": registry.get_model_class("glscl_pretrain") is not None}, handle)
    """))
    report = tmp_path / "report.json"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    # setenv first so that teardown removes the value main() sets by default.
    monkeypatch.setenv("HF_HUB_OFFLINE", "unset")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    run_lavis_script.main([str(script), "--help", "--cfg-path", "x.yaml", str(report)])
    seen = json.loads(report.read_text())
    assert seen == {"name": "__main__", "argv": [str(script), "--help", "--cfg-path", "x.yaml", str(report)],
                    "path0": str(script.parent.resolve()), "offline": "1", "glscl": True}
    assert f"not {script.parent / 'lavis'}" in capsys.readouterr().err


def test_run_lavis_script_names_a_missing_script(tmp_path, capsys):
    from lavis_glscl import run_lavis_script

    with pytest.raises(SystemExit) as exit_info:
        run_lavis_script.main([str(tmp_path / "LAVIS" / "train.py"), "--cfg-path", "x.yaml"])
    assert exit_info.value.code == 2
    assert f"no script at '{tmp_path / 'LAVIS' / 'train.py'}'" in capsys.readouterr().err
