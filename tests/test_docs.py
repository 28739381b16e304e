"""The docs against the code: the configuration reference names every key of the composed config
with its default (and no key the config lacks), every relative link in README.md and docs/ leads
to a file that exists, and the README stays a front page, not a manual."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from regsweep.config import CONF_DIR, compose, compose_study

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
REFERENCE = DOCS / "configuration.md"
README_LIMIT = 12_500  # bytes: a front page that links into docs/

ROW = re.compile(r"^\|\s*`([a-z_]+(?:\.[A-Za-z0-9_]+)+)`\s*\|([^|]*)\|", re.M)  # | `key` | default | …
CODE = re.compile(r"`([^`]*)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*```.*?^\s*```", re.M | re.S)


def leaves(node, prefix: str = ""):
    """(dotted key, value) for every leaf of a plain (unresolved) container; lists are leaves."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def config_defaults() -> dict[str, list]:
    """Every leaf of `regsweep train`'s config and of the default sweep's settings, each with the
    values the reference may show for it: as written in the YAML, and resolved."""
    train, study = compose(), compose_study([])
    written = dict(leaves(OmegaConf.to_container(train, resolve=False)))
    written |= dict(leaves(OmegaConf.to_container(study.sweep, resolve=False), "sweep."))
    resolved = dict(leaves(OmegaConf.to_container(train, resolve=True)))
    resolved |= dict(leaves(OmegaConf.to_container(study, resolve=True)["sweep"], "sweep."))
    return {key: [written[key], resolved.get(key)] for key in written}


def documented() -> dict[str, list[str]]:
    """The reference's rows: key → the code spans of its default cell."""
    rows: dict[str, list[str]] = {}
    for key, default in ROW.findall(REFERENCE.read_text()):
        assert key not in rows, f"{key} is documented twice in docs/configuration.md"
        rows[key] = CODE.findall(default)
    return rows


def shows(span: str, value) -> bool:
    """Whether a code span such as `0.001`, `null`, `[0.25, 0.5]` or `mlruns/cache` is the value."""
    if span == str(value):
        return True
    try:
        return yaml.safe_load(span) == value
    except yaml.YAMLError:
        return False


@pytest.fixture(scope="module")
def defaults() -> dict[str, list]:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # tracking.uri's default reads it
        yield config_defaults()


def test_every_config_key_is_documented_with_its_default(defaults):
    rows = documented()
    missing = sorted(set(defaults) - set(rows))
    assert missing == [], f"add these keys to docs/configuration.md: {missing}"
    wrong = {
        key: (rows[key], values)
        for key, values in defaults.items()
        if not any(shows(span, value) for span in rows[key] for value in values)
    }
    assert wrong == {}, "docs/configuration.md shows another default (documented, actual): " + repr(wrong)


def test_every_documented_key_exists(defaults):
    stale = sorted(set(documented()) - set(defaults))
    assert stale == [], f"docs/configuration.md documents keys the config does not have: {stale}"


def test_every_config_group_option_is_documented():
    text = REFERENCE.read_text()
    options = [f"{g.name}={o.stem}" for g in CONF_DIR.iterdir() if g.is_dir() for o in g.glob("*.yaml")]
    missing = sorted(o for o in options if f"`{o}`" not in text)
    assert missing == [], f"add these config group options to docs/configuration.md: {missing}"


def prose(page: Path) -> str:
    """The page without its code blocks and code spans: links inside code are not links."""
    return CODE.sub("", FENCE.sub("", page.read_text()))


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    text = prose(page)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == [], f"{page.relative_to(REPO)} links to missing files: {broken}"


def test_the_docs_stay_inside_docs():
    """mkdocs build --strict refuses links out of docs/; the repository's other files are named as code."""
    outside = [
        f"{page.name}: {target}"
        for page in sorted(DOCS.rglob("*.md"))
        for target in LINK.findall(prose(page))
        if not re.match(r"^[a-z][a-z0-9+.-]*:|#", target)
        and not (page.parent / target.split("#", 1)[0]).resolve().is_relative_to(DOCS)
    ]
    assert outside == []


def test_the_readme_is_a_front_page():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes: move detail into docs/ (limit {README_LIMIT})"


def test_every_page_is_in_the_nav():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert [p for p in pages if f": {p}" not in nav] == []


def test_the_code_tour_lists_every_module():
    tour = (DOCS / "architecture.md").read_text()
    modules = sorted(p.name for p in (REPO / "src" / "regsweep").glob("*.py") if p.name != "__init__.py")
    assert [m for m in modules if f"`{m}`" not in tour] == []


def _readme_answer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_answer", REPO / "benchmarks" / "readme_answer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_answer_block_is_cut_from_make_runs_output_and_names_its_commit():
    """`make readme-answer` keeps the README's answer what `make run` prints: the block is the
    answer's lines verbatim, under a sentence naming the commit and date it was measured at."""
    readme_answer = _readme_answer()
    output = "\n".join(
        [
            "trial 24/24 (#23) ... | COMPLETE val 0.953 gap 0.047 | best #9: val 0.953 gap 0.047",
            "",
            "Study 'regularization': 24 complete, 0 pruned, 0 failed",
            "",
            "The answer",
            "  Use trial #9: model.dropout=0.1.",
            "  Verdict on the test split (701 images): Better.",
            "Top trials, in the rule's order:   #  val_acc   gap    knobs",
            "              9  0.9533  +0.0467  dropout=0.1",
            "Report: mlruns/reports/regularization/report.md (and report.html)",
        ]
    )
    answer = readme_answer.answer_lines(output)
    assert answer == [
        "The answer",
        "  Use trial #9: model.dropout=0.1.",
        "  Verdict on the test split (701 images): Better.",
    ]
    readme = (REPO / "README.md").read_text()
    new = readme_answer.replace_block(readme, readme_answer.block(answer, "abc1234", "2026-12-07", 412.0))
    assert "at commit abc1234, 2026-12-07; 412 s with set-up" in " ".join(new.split())
    assert "```\nThe answer\n  Use trial #9: model.dropout=0.1.\n" in new
    assert new.replace(new[new.index(readme_answer.BEGIN) : new.index(readme_answer.END)], "") == readme.replace(
        readme[readme.index(readme_answer.BEGIN) : readme.index(readme_answer.END)], ""
    )  # nothing else of the README changes
    current = readme[readme.index(readme_answer.BEGIN) : readme.index(readme_answer.END)]
    assert re.search(r"at commit [0-9a-f]{7,}, 20\d\d-\d\d-\d\d", current), "the block names its commit and date"
