"""The README's test command is what CI runs (.ci/run), verbatim."""

from pathlib import Path

ROOT = Path(__file__).parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = text.split("```bash")[1:]
    return [b.split("```")[0].strip().splitlines()[-1] for b in blocks]


def test_ci_runs_the_readme_test_command() -> None:
    commands = _readme_commands()
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert test_cmd in ci


def test_readme_main_command_targets_an_existing_script() -> None:
    main_cmd = _readme_commands()[0]
    target = main_cmd.split()[-1]
    if target.endswith(".py"):
        assert (ROOT / target).exists(), target
    else:  # python -m package.module
        module = main_cmd.split("-m")[-1].split()[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module


def _quick_start_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_quick_start_runs_as_written() -> None:
    """The Quick start is a complete NNX training step: it runs verbatim."""
    import math

    from flax import nnx

    import optx

    namespace: dict = {}
    exec(compile(_quick_start_code(), "README.md:quick-start", "exec"), namespace)
    assert math.isfinite(float(namespace["loss"]))
    assert int(namespace["optimizer"].step[...]) == 1
    model = namespace["model"]
    table = str(optx.describe(namespace["tx"], nnx.state(model, nnx.Param)))
    assert "hidden/kernel" in table and "matrix" in table


def test_ci_builds_the_docs_after_the_tests() -> None:
    """README's docs command (Sphinx, warnings as errors, doctests) runs in CI after pytest."""
    commands = _readme_commands()
    docs_cmd = next(c for c in commands if "sphinx" in c)
    assert "-W" in docs_cmd.split() and "--doctest-glob=" in docs_cmd
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_cmd = next(c for c in commands if "pytest" in c)
    assert ci.index(docs_cmd) > ci.index(test_cmd)
