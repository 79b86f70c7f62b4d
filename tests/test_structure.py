"""The package reads next to the paper: no import cycles, every pointer of docs/paper_map.md exists, and no code points
outside the repository.

    python -m pytest -q tests/test_structure.py
"""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "nanorevisual")


def package_imports():
    """{module: {package modules it imports}}, counting imports inside functions too (an import hidden in a
    function still ties the two modules together); a script's `if __name__ == "__main__":` block is not a
    dependency of the module and is skipped."""
    graph = {}
    for name in sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"):
        tree = ast.parse(open(os.path.join(PACKAGE, name + ".py")).read())
        main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        skipped = {id(n) for block in main_blocks for n in ast.walk(block)}
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanorevisual"):
                if node.module == "nanorevisual":
                    deps |= {alias.name for alias in node.names}
                else:
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nanorevisual.")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return path + [node, dep]
            if dep not in state:
                cycle = visit(dep, path + [node])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in graph:
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    graph = package_imports()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None  # the detector itself works


def test_paper_map_points_at_real_code():
    """Every `file` and `file` `function` pair named in docs/paper_map.md exists."""
    text = open(os.path.join(ROOT, "docs", "paper_map.md")).read()
    pairs = re.findall(r"`([\w/]+\.(?:py|md|sh))`(?:\s+`([\w.]+)`)?", text)
    assert len(pairs) >= 30
    for path, name in pairs:
        full = os.path.join(ROOT, path)
        assert os.path.exists(full), path
        if name and path.endswith(".py"):
            source = open(full).read()
            assert re.search(rf"^\s*(def|class) {re.escape(name)}\b|^{re.escape(name)}\s*=", source, re.M), \
                f"{path}: no {name}"


def test_code_points_only_inside_the_repository():
    """No machine paths, and every *.md a comment or docstring names is a file of the repository."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(ROOT) for f in fs
             if f.endswith((".py", ".sh")) and ".git" not in d and "runs" not in d.split(os.sep)]
    files += [os.path.join(ROOT, "requirements.txt"), os.path.join(ROOT, ".ci", "run")]
    for path in files:
        source = open(path).read()
        assert not re.search(r"/(work|home|Users|root)/\w", source), f"{path}: an absolute machine path"
        for ref in re.findall(r"(?<![\w/])((?:[\w-]+/)*[\w-]+\.md)\b", source):
            if os.path.basename(ref) in ("report.md", "results.md"):  # files the scripts write
                continue
            assert any(os.path.exists(os.path.join(ROOT, d, ref)) for d in ("", "docs")), \
                f"{os.path.relpath(path, ROOT)} points to {ref}"


def code_files():
    return [os.path.join(d, f) for d, _, fs in os.walk(ROOT) for f in fs if f.endswith(".py")
            and ".git" not in d and "runs" not in d.split(os.sep) and "data" not in d.split(os.sep)]


def test_docs_name_only_files_and_functions_that_exist():
    """Every `path.py` and `module.function` a docs page names is in the repository."""
    modules = {f[:-3]: os.path.join(d, f) for d in ("nanorevisual", "studies")
               for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(".py")}
    for page in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        if not page.endswith(".md"):
            continue
        text = open(os.path.join(ROOT, "docs", page)).read()
        for path in re.findall(r"`((?:[\w-]+/)*[\w-]+\.(?:py|sh))`", text):
            if "/" in path and path.split("/")[0] not in os.listdir(ROOT):
                continue  # the released code's files (verl/..., examples/...)
            assert any(os.path.exists(os.path.join(ROOT, d, path)) for d in ("", "nanorevisual")), \
                f"docs/{page} names {path}"
        for module, name in re.findall(r"`(\w+)\.(\w+)`", text):
            if module in modules and name not in ("py", "sh"):  # `rollout.py` is a file
                source = open(os.path.join(ROOT, modules[module])).read()
                assert re.search(rf"^\s*(def|class) {name}\b|^{name}\s*=", source, re.M), \
                    f"docs/{page} names {module}.{name}"


def test_pitfall_and_deviation_numbers_in_code_resolve():
    """`pitfall N` points at a numbered entry of docs/pitfalls.md; `Deviation N` at the file's own list,
    or else at docs/paper_notes.md §8."""
    pitfalls = len(re.findall(r"^\d+\. ", open(os.path.join(ROOT, "docs", "pitfalls.md")).read(), re.M))
    for path in code_files():
        source = open(path).read()
        for group in re.findall(r"pitfalls? ((?:\d+(?:, | and )?)+)", source):
            for n in map(int, re.findall(r"\d+", group)):
                assert 1 <= n <= pitfalls, f"{os.path.relpath(path, ROOT)}: pitfall {n} of {pitfalls}"
    notes = open(os.path.join(ROOT, "docs", "paper_notes.md")).read().split("## 8. Deviations")[1]
    shared = len(re.findall(r"^\d+\. ", notes.split("\n## ")[0], re.M))
    for path in code_files():
        source = open(path).read()
        doc = source.split('"""')[1] if source.lstrip().startswith('"""') else ""
        own = len(re.findall(r"^ *\d+\. ", doc.split("Deviations")[1], re.M)) if "Deviations" in doc else 0
        for n in map(int, re.findall(r"Deviations? (\d+)", source)):  # its own list, else paper_notes §8
            assert 1 <= n <= (own or shared), f"{os.path.relpath(path, ROOT)}: Deviation {n}"
