"""``.ci/run``: installs as the README's test command (set-up command 2) does, lints, then runs every test in two
passes, the quick one first."""
import shlex

from helpers import REPO


def test_ci_installs_as_the_readme_test_command_then_lints_and_runs_the_quick_and_the_slow_tests():
    readme = (REPO / "README.md").read_text().splitlines()
    (readme_command,) = [line for line in readme if line.startswith("python3 -m venv") and "pytest" in line]
    install, test = readme_command.rsplit(" && ", 1)
    steps = [line for line in (REPO / ".ci" / "run").read_text().splitlines()[1:]
             if line and not line.startswith(("#", "set ", "cd "))]
    *pytest, tests = shlex.split(test)
    python = pytest[0]
    assert steps[0] == install
    assert shlex.split(steps[1]) == [python, "-m", "ruff", "check", "."]
    # the README's pytest command with complementary markers over the same tests: together, every test
    assert [shlex.split(step) for step in steps[2:]] == [[*pytest, "-m", "not slow", tests],
                                                         [*pytest, "-m", "slow", tests]]
