"""The README's Python section opens with code that runs as written: extracted and executed."""

import os

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def test_readme_python_block_runs():
    text = open(README, encoding="utf-8").read()
    start = text.index("```python\nimport torch, flexattn")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    q, bias, out = scope["q"], scope["bias"], scope["out"]
    assert out.shape == q.shape and q.grad is not None
    assert bias.grad is not None and bias.grad.abs().sum() > 0
