"""The README's two opening commands: CI runs the test one exactly as written, the main one exists."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md must open with a ```bash block holding the two commands"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_two_commands_ci_runs():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    install = "python -m pip install -r requirements.txt && "
    assert main.startswith(install) and tests.startswith(install)
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    test_command = tests[len(install):]
    assert re.search(rf"^{re.escape(test_command)}$", ci, re.M), \
        f".ci/run must run the README's test command exactly: {test_command!r}"
    assert "python -m pip install -q -r requirements.txt" in ci


def test_main_command_names_a_registered_optimizer():
    main = readme_commands()[0]
    opt = re.search(r"python train\.py --opt (\w+)$", main)
    assert opt, main
    import registry
    assert opt.group(1) in registry.OPTIMIZERS


def test_readme_lists_every_registered_name():
    """The README's "Train." paragraph names every --opt the registry knows (no stale names)."""
    import registry
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index("**Train.**")
    para = text[start:text.index("\n\n", start)]
    listed = set(re.findall(r"`(\w+)`", para)) - {"NAME"}
    assert listed == set(registry.OPTIMIZERS), sorted(listed ^ set(registry.OPTIMIZERS))


def test_requirements_are_the_declared_dependencies():
    names = {re.split(r"[<>=\s]", line)[0].lower()
             for line in open(os.path.join(ROOT, "requirements.txt")) if line.strip()}
    assert names == {"jax", "numpy", "optax", "matplotlib", "pytest", "pytest-xdist"}


def test_nothing_reads_shared_at_run_or_test_time():
    """The project stands alone: no module or test opens ../shared."""
    here = os.path.basename(__file__)
    for folder in (ROOT, os.path.join(ROOT, "tests")):
        for name in os.listdir(folder):
            if name.endswith(".py") and name != here:
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                code = [l for l in text.splitlines() if "shared" in l and not l.lstrip().startswith("#")
                        and ("open(" in l or "load(" in l or "Path(" in l or "join(" in l)]
                assert not [l for l in code if "../shared" in l or "'shared'" in l
                            or '"shared"' in l], (name, code)


def test_train_help_runs_without_error():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--opt" in r.stdout and "--resume" in r.stdout


def test_citations_name_papers_not_files_outside_the_repository():
    """A reader has the papers (arXiv ids), not our notes: no code or doc cites celo.txt & co."""
    here = os.path.basename(__file__)
    bad = ("celo.txt", "mulo.txt", "velo_summary.txt", "REFERENCE.md", "CELO2.md", "STYLE.md")
    found = []
    for folder in (ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "docs")):
        for name in os.listdir(folder):
            if name.endswith((".py", ".md")) and name != here:
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                found += [(name, b) for b in bad if b in text]
    assert not found, found
