"""volnb.site: the HTML reports site generated from the repository, built with MkDocs and checked in headless Chromium.

The browser tests need Debian's Chromium at /usr/bin/chromium, which scripts/setup.sh installs; without it they
fail (never skip) with a message saying so.
"""
import json
import shutil
import struct
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest

from volnb.cli import main
from volnb.site import (CHROMIUM, CHROMIUM_FLAGS, SiteCheckError, build_site, check_site, dvc_stages,
                        generate_sources, producer, serve_site)

ROOT = Path(__file__).resolve().parents[1]
FAKE_SHOTS = {"landing": "index.html", "experiment": "experiments/herremans.html", "library": "library/00_toy.html"}


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs it "
                    "(apt-get install --no-install-recommends chromium chromium-driver)")
    return CHROMIUM


def make_tree(root: Path) -> Path:
    "A tiny repository: two experiments, one stage, a ledger, a figure, an executed notebook, a library notebook."
    (root / "settings.ini").write_text("[DEFAULT]\ntitle = toyproj\ndescription = A toy project\n"
                                       "git_url = https://github.com/toy/toyproj\nbranch = main\n")
    shutil.copytree(ROOT / "site", root / "site")
    (root / "dvc.yaml").write_text(
        "vars:\n  - exp: herremans\nstages:\n  evaluate:\n    cmd: volnb stage evaluate\n    deps:\n"
        "      - nbs/pipeline/evaluate.ipynb\n    outs:\n      - reports/notebooks/${exp}/evaluate.ipynb\n"
        "      - reports/tables/${exp}/table3.csv:\n          cache: false\n"
        "      - reports/figures/${exp}/fig.png:\n          cache: false\n"
        "    metrics:\n      - reports/metrics/${exp}.json:\n          cache: false\n")
    tables = root / "reports" / "tables" / "herremans"
    tables.mkdir(parents=True)
    pd.DataFrame({"model": ["garch", "lstm", "transformer"], "rmse": [0.17, 0.125, 0.5]}).to_csv(tables / "table3.csv", index=False)
    (tables / "table3.md").write_text("Table 3 (toy): test RMSE per model.\n\n| model | rmse |\n|--|--|\n| garch | 0.17 |\n")
    pd.DataFrame({"id": ["c1", "c2", "c3"], "claim": ["a", "b", "c"],
                  "verdict": ["reproduced", "not reproduced", "not testable on public data"]}).to_csv(tables / "claims.csv", index=False)
    (tables / "claims.md").write_text("Claims ledger (toy).\n\n| id |\n|--|\n| c1 |\n")
    pd.DataFrame({"x": [1]}).to_csv(tables / "orphan.csv", index=False)          # written by no stage, no caption
    (root / "reports" / "tables" / "spike60s").mkdir(parents=True)
    pd.DataFrame({"model": ["zscore"], "pr_auc": [0.3]}).to_csv(root / "reports" / "tables" / "spike60s" / "models.csv", index=False)
    figs = root / "reports" / "figures" / "herremans"
    figs.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 1.5)); ax.plot([0, 1], [1, 0]); fig.savefig(figs / "fig.png"); plt.close(fig)
    (root / "reports" / "metrics").mkdir(parents=True)
    (root / "reports" / "metrics" / "herremans.json").write_text(json.dumps({"rmse": 0.17}))
    nbdir = root / "reports" / "notebooks" / "herremans"
    nbdir.mkdir(parents=True)
    out = nbformat.v4.new_output("execute_result", data={"text/html": pd.DataFrame({"a": [1, 2]}).to_html(),
                                                         "text/plain": "   a\n0  1\n1  2"}, execution_count=1)
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Stage `evaluate`: toy\n\nThe loss $x^2$.\n\n## Table `3`"),
        nbformat.v4.new_code_cell("df", outputs=[out], execution_count=1)]), nbdir / "evaluate.ipynb")
    (root / "nbs" / "pipeline").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# toy\n\n> A toy module.\n\nThe toyword formula $\\sigma_t^2 = \\omega + \\alpha r_{t-1}^2$."),
        nbformat.v4.new_code_cell("#| default_exp toy"),
        nbformat.v4.new_code_cell("#| export\ndef toy_fn(x: int, scale: float = 2.0) -> float:\n    \"Scale `x`.\"\n    return x * scale"),
        nbformat.v4.new_code_cell("assert toy_fn(1) == 2.0")]), root / "nbs" / "00_toy.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# toyproj\n\nThe README.")]),
                   root / "nbs" / "index.ipynb")
    bench = root / "reports" / "benchmarks"
    bench.mkdir(parents=True)
    shutil.copy(figs / "fig.png", bench / "speed.png")
    (bench / "speed.md").write_text("# Speed\n\nMeasured by [the script](../../dvc.yaml).\n\n![speed](speed.png)\n")
    return root


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def fake_site(fake, tmp_path_factory):
    site = tmp_path_factory.mktemp("built") / "site"
    summary = build_site(fake, site)
    return site, summary


def test_pages_of_a_fake_repository(fake, tmp_path):
    gen = generate_sources(fake, tmp_path / "docs", assets=fake / "site" / "assets")
    docs = tmp_path / "docs"
    index = (docs / "index.md").read_text()
    # the ledger first, its verdicts counted and coloured; the missing ledger said to be missing
    assert index.index("herremans: claims") < index.index("Headline results")
    assert "3 claims" in index and '<td class="verdict verdict-yes">reproduced</td>' in index
    assert '<td class="verdict verdict-no">not reproduced</td>' in index and "verdict-na" in index
    assert "Not built yet: `reports/tables/spike60s/claims.csv` does not exist." in index
    assert "Table 3 (toy): test RMSE per model." in index                       # a headline table with its caption
    exp = (docs / "experiments" / "herremans.md").read_text()
    assert "## Stage `evaluate`" in exp and "Command `volnb stage evaluate`" in exp
    assert "[`nbs/pipeline/evaluate.ipynb`](https://github.com/toy/toyproj/blob/main/nbs/pipeline/evaluate.ipynb)" in exp
    assert "([executed](../notebooks/herremans/evaluate.ipynb))" in exp
    assert '<td class="num" data-sort="0.125">0.125</td>' in exp               # every row of the CSV, sortable by value
    assert exp.index("## Written by no stage") < exp.index("### orphan")       # the file no stage writes, said so
    assert "![fig](../files/figures/herremans/fig.png)" in exp and '"rmse": 0.17' in exp
    assert (docs / "files" / "tables" / "herremans" / "table3.csv").read_bytes() == \
        (fake / "reports" / "tables" / "herremans" / "table3.csv").read_bytes()
    lib = (docs / "library" / "00_toy.md").read_text()
    assert "```python\ndef toy_fn(x: int, scale: float=2.0) -> float\n```\n\nScale `x`." in lib and "<math" in lib
    assert "Source notebook [`nbs/00_toy.ipynb`]" in lib and "module `volnb.toy`" in lib
    assert "Not built yet" in (docs / "provenance.md").read_text()              # no data/PROVENANCE.md here
    assert "Not built yet: run `dvc repro` to execute the spike60s stage notebooks." in (docs / "notebooks" / "index.md").read_text()
    bench = (docs / "benchmarks" / "speed.md").read_text()                     # a repository link outside the site -> GitHub
    assert "[the script](https://github.com/toy/toyproj/blob/main/dvc.yaml)" in bench and "![speed](speed.png)" in bench
    nb = nbformat.read(docs / "notebooks" / "herremans" / "evaluate.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# Stage <code>evaluate</code>: toy") and "<math" in nb.cells[0].source
    test_summary = gen["summary"]
    assert (test_summary["tables"], test_summary["figures"], test_summary["notebooks"], test_summary["library"]) == (4, 1, 1, 1)
    assert test_summary["failed_formulas"] == []


def test_stages_of_the_real_dvc_yaml():
    stages = dvc_stages(ROOT / "dvc.yaml")
    assert producer(stages, "reports/tables/herremans/table3.csv").name == "evaluate"
    assert producer(stages, "reports/tables/herremans/table3_published_code.csv").name == "evaluate_published_code"
    assert producer(stages, "reports/figures/herremans/explain/feature_importance.png").name == "explain"
    assert producer(stages, "reports/metrics/spike60s.json").name == "spike_evaluate"
    st = stages["evaluate_published_code"]
    assert (st.cmd, st.notebook) == ("volnb stage evaluate_published_code", "nbs/pipeline/evaluate.ipynb")
    assert st.executed == ("reports/notebooks/herremans/evaluate_published_code.ipynb",)


def test_a_broken_markdown_link_fails_the_build(fake, tmp_path):
    repo = shutil.copytree(fake, tmp_path / "repo")
    (repo / "reports" / "benchmarks" / "speed.md").write_text("# Speed\n\nSee [the plot](no_such_plot.png).\n")
    with pytest.raises(RuntimeError, match="no_such_plot.png"):
        build_site(repo, tmp_path / "site")
    assert not (tmp_path / "site").exists()                                    # nothing half-built is left


def test_fake_site_passes_the_browser_check(chromium, fake_site, tmp_path):
    site, summary = fake_site
    assert summary["mathjax_tags_removed"] >= 1 and summary["failed_formulas"] == []
    report = check_site(site, tmp_path / "check", screenshots=FAKE_SHOTS, search="toyword")
    for page in ["/index.html", "/experiments/herremans.html", "/experiments/spike60s.html",
                 "/notebooks/herremans/evaluate.html", "/library/00_toy.html", "/benchmarks/speed.html", "/provenance.html"]:
        assert page in report["pages"], page
    assert "/files/tables/herremans/table3.csv" in report["files"]
    assert report["problems"] == [] and report["search_results"] >= 1
    assert report["images"] >= 2 and report["tables"] >= 6
    for name in FAKE_SHOTS:
        png = (tmp_path / "check" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 900)
    assert json.loads((tmp_path / "check" / "report.json").read_text())["pages"] == report["pages"]


def test_tables_sort_by_value_in_the_browser(chromium, fake_site, tmp_path):
    from playwright.sync_api import sync_playwright
    site, _ = fake_site
    with serve_site(site) as base, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=CHROMIUM_FLAGS)
        try:
            page = ctx.new_page()
            page.goto(base + "experiments/herremans.html")
            table = page.locator('[data-table="reports/tables/herremans/table3.csv"] table')
            col = lambda: table.locator("tbody tr td:nth-child(2)").all_inner_texts()
            assert col() == ["0.17", "0.125", "0.5"]
            table.locator("th", has_text="rmse").click()
            assert col() == ["0.125", "0.17", "0.5"]                          # by value, not as text
            table.locator("th", has_text="rmse").click()
            assert col() == ["0.5", "0.17", "0.125"]
        finally:
            ctx.close()


def test_browser_check_fails_on_a_broken_site(chromium, fake_site, tmp_path):
    site = shutil.copytree(fake_site[0], tmp_path / "site")
    exp = site / "experiments" / "herremans.html"
    exp.write_text(exp.read_text().replace("</article>", '<a href="no_such_page.html">x</a>'
                                           '<a href="herremans.html#no-such-anchor">y</a></article>', 1))
    (site / "files" / "figures" / "herremans" / "fig.png").unlink()            # a missing image and a dead file link
    idx = site / "index.html"
    idx.write_text(idx.read_text().replace("</body>", "<script>throw new Error('boom in the page')</script></body>", 1))
    lib = site / "library" / "00_toy.html"
    lib.write_text(lib.read_text().replace("</article>", "<table><thead><tr><th>a</th></tr></thead><tbody></tbody></table></article>", 1))
    with pytest.raises(SiteCheckError) as e:
        check_site(site, tmp_path / "check", screenshots=FAKE_SHOTS, search=None)
    problems = "\n".join(e.value.problems)
    assert "broken link: /experiments/no_such_page.html (linked from /experiments/herremans.html) answers 404" in problems
    assert "broken link: /experiments/herremans.html#no-such-anchor" in problems
    assert "missing image on /experiments/herremans.html: /files/figures/herremans/fig.png" in problems
    assert "broken link: /files/figures/herremans/fig.png" in problems
    assert "/index.html: JavaScript error: boom in the page" in problems
    assert "empty table on /library/00_toy.html" in problems
    assert (tmp_path / "check" / "landing.png").exists()                       # screenshots and report even when it fails
    assert json.loads((tmp_path / "check" / "report.json").read_text())["problems"] == e.value.problems


def test_site_command_errors():
    with pytest.raises(SystemExit):
        main(["site", "publish"])
    assert main(["site", "serve", "--site-dir", "/nonexistent/site"]) == 2


def test_committed_reports_build_and_pass_the_browser_check(chromium, tmp_path):
    "`volnb site build --check` on this repository's tables, figures and notebooks: every page loads clean."
    site, out = tmp_path / "site", tmp_path / "check"
    assert main(["site", "build", "--check", "--site-dir", str(site), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["problems"] == []
    for exp in ["herremans", "spike60s", "multitoken"]:
        assert f"/experiments/{exp}.html" in report["pages"]
        page = (site / "experiments" / f"{exp}.html").read_text()
        committed = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "reports" / "tables" / exp).glob("*.csv"))
        assert sorted(set(page.split('data-table="')[i].split('"')[0] for i in range(1, page.count('data-table="') + 1))) == committed
        figures = [p for p in (ROOT / "reports" / "figures" / exp).rglob("*.png")]
        assert page.count('<figure class="volnb-figure"') == len(figures)
    assert sorted(report["screenshots"]) == ["experiment", "landing", "library"]
    assert all((out / f).stat().st_size > 10_000 for f in report["screenshots"].values())
