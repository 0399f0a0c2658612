"""The docs site builds strictly (a broken link or anchor fails), and its parameter reference is the
pipelines' own interface."""

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """mkdocs build --strict (not -q: quiet hides the warnings that --strict counts)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its successor, on every build
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=root, env=env)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    built = build(REPO, out)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def test_the_reference_lists_every_parameter_of_every_pipeline_with_its_meaning(site):
    from tlpipe.cluster import pipeline, pipelines

    page = (site / "parameters" / "index.html").read_text()
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    for name in pipelines():
        for parameter, spec in pipeline(name).component_spec.inputs.items():
            assert f"<code>{parameter}</code>" in page, (name, parameter)
            assert spec.description and " ".join(spec.description.split()) in text, (name, parameter)


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "data.md"
    page.write_text(page.read_text() + "\nSee [the splits](methods.md#no-such-section).\n")
    broken = build(copy, tmp_path / "site")
    assert broken.returncode != 0 and "no-such-section" in broken.stdout + broken.stderr


def tlpipe_commands(markdown: str) -> list[list[str]]:
    """The `tlpipe ...` commands of a page's code blocks, continuation lines joined, as argument lists."""
    import shlex

    commands, inside, lines = [], False, []
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        words = shlex.split(line.split(" #")[0]) if "tlpipe " in line else []
        while words and "=" in words[0]:  # VAR=value before the command
            words.pop(0)
        if words and words[0].endswith(("bin/tlpipe", "tlpipe")) and not words[0].startswith("scripts/"):
            commands.append(words[1:])
    return commands


@pytest.mark.parametrize("page", ["README.md", "docs/kubeflow.md", "docs/methods.md", "docs/stack.md", "docs/recovery.md"])
def test_the_commands_the_docs_show_parse_and_name_real_parameters(page):
    """Each `tlpipe` command a page shows, as written: a command and options that exist, and for a run,
    submit or schedule, parameters the pipeline has with values its checks accept."""
    from tlpipe.cli import build_parser, routed
    from tlpipe.cluster import pipeline
    from tlpipe.preflight import check_parameters, pipeline_arguments

    commands = tlpipe_commands((REPO / page).read_text())
    assert commands
    parser = build_parser()
    for words in commands:
        if any("<" in w or "..." in w for w in words):  # a template (<name>, RUN_ID...), not a command
            continue
        args = parser.parse_args(routed(words))
        if args.command in ("run", "submit", "schedule") and not str(getattr(args, "pipeline", "")).endswith(".yaml"):
            built = pipeline(args.pipeline or "transfer")
            arguments = pipeline_arguments(built, dict(p.split("=", 1) for p in args.param))
            check_parameters({k: spec.default for k, spec in built.component_spec.inputs.items()} | arguments)
