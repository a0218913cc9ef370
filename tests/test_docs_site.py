"""The documentation site (MkDocs Material + mkdocstrings, mkdocs.yml): the API page is
current and names every public object, the site builds in strict mode (a broken link
fails it), the tutorial shows both tabs side by side, and a real headless browser
renders it."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

import d2lft

pytestmark = pytest.mark.docs_site

REPO = pathlib.Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
yaml = pytest.importorskip("yaml")


def test_reference_page_is_current_and_complete():
    # a fresh interpreter: the script also checks that it imported no framework
    proc = subprocess.run(
        [sys.executable, "scripts/make_api_doc.py", "--check"],
        cwd=REPO,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:] or "run python scripts/make_api_doc.py"
    text = (REPO / "docs" / "reference.md").read_text()
    missing = [
        n
        for n in d2lft.__all__
        if n != "__version__" and f"d2lft.{n}\n" not in text and f"`{n}`" not in text
    ]
    assert not missing, missing
    assert "### `d2lft train`" in text and "--data-dir" in text


def build(config, site):
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    proc = build(REPO / "mkdocs.yml", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_site_builds_strictly_and_a_broken_link_fails_it(site, tmp_path):
    assert (site / "index.html").is_file() and (site / "reference.html").is_file()
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    with open(docs / "own-images.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(REPO / h) for h in config["hooks"]]
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(REPO)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0 and "no-such-page.md" in proc.stderr


def test_pages_render_tabs_and_docstrings(site):
    chapter = (site / "chapter.html").read_text()
    assert chapter.count('class="tabbed-set') >= 6
    assert chapter.count(">MXNet</label>") >= 6 and chapter.count(">PyTorch</label>") >= 6
    reference = (site / "reference.html").read_text()
    assert "Train <code>net</code> the way the active backend" in reference
    assert "learning_rate" in reference and ":func:" not in reference
    for page in ("own-images", "offline", "speed", "parity", "tutorial"):
        assert (site / f"{page}.html").is_file()


def browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.browser
@pytest.mark.skipif(browser() is None, reason="no headless Chromium (apt-get install chromium)")
def test_a_real_browser_renders_the_chapter_page(site, tmp_path):
    from PIL import Image, ImageStat

    shot = tmp_path / "chapter.png"
    proc = subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            f"--screenshot={shot}",
            (site / "chapter.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 1000)
        grey = im.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 20  # a page with text, not a blank one
        header = im.convert("RGB").crop((0, 0, 1280, 40))
        r, g, b = ImageStat.Stat(header).mean  # Material's indigo header bar is drawn
        assert b > r + 30


def command_lines(text):
    """`d2lft ...` lines of the ```bash blocks of a Markdown text."""
    import re
    import shlex

    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)  # continued lines: one command
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("d2lft "):
                yield shlex.split(line)[1:]


def test_readme_and_docs_commands_parse_and_the_readme_starts_with_them():
    from d2lft import cli

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    seen = 0
    for page in pages:
        for argv in command_lines(page.read_text()):
            cli.build_parser().parse_args(argv)  # an unknown flag exits (status 2)
            seen += 1
    assert seen >= 15
    readme = (REPO / "README.md").read_text()
    install = readme.index("## Install")
    top = readme[:install]
    for needle in ("d2lft train --data-dir", "d2lft evaluate", "d2lft predict", "d2lft.predict"):
        assert needle in top, needle  # the first contact is near the top
    assert "How long the chapter takes" in top and "H200" in top and "2-core CPU" in top
    section = readme[install : readme.index("\n## ", install + 5)]
    assert "mallopt" not in section and "MXNET_OMP_MAX_THREADS" not in section
    assert 'pip install -e ".[torch]"' in section
