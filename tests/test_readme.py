import re
import subprocess
import sys

from conftest import REPO


def test_kernel_example_in_readme_runs_and_converges():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The kernel stands alone"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tv, exact_err, calls = map(float, out.stdout.split())
    assert tv < 0.05 and exact_err < 1e-8 and calls == 380


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "<!-- test-command -->" in (REPO / "README.md").read_text()
