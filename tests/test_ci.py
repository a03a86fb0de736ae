"""``.ci/run`` runs the README's test command (set-up command 2)."""
from helpers import REPO


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in ci_command and f"\n{ci_command}\n" in readme
