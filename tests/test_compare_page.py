"""compare.html in a real browser (headless Chromium): its table and every plot load, with no console error; a
search's plots are one point per trial."""

from __future__ import annotations

import pytest
from test_compare import make_job, rank_sweep

from helpers.browser import check_page, chromium
from stylexfer import compare

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium() is None, reason="no chromium installed (Debian: apt-get install chromium)"),
]


def test_the_compare_page_loads_its_table_and_every_plot(tmp_path):
    sweep = rank_sweep(tmp_path / "multirun" / "2026-12-03" / "10-00-00")
    compare.main([str(sweep)])
    plots = sorted(p.name for p in sweep.glob("plot_*.png"))
    assert plots  # the page has something to load
    page = check_page(sweep / "compare.html")
    assert page["broken"] == [] and page["images"] >= len(plots)
    assert page["tables"] >= 1 and page["rows"] >= 5  # a header and the four jobs
    assert page["console_errors"] == []
    (sweep / "plot_lora-unet_lora_rank_final.png").unlink()  # the check can fail: a missing plot is caught
    assert check_page(sweep / "compare.html")["broken"] == ["plot_lora-unet_lora_rank_final.png"]


def test_a_search_is_drawn_one_point_per_trial(tmp_path, monkeypatch):
    sweep = tmp_path / "search"
    for n, (lr, rank, final) in enumerate([(1e-4, 4, 0.2), (3e-4, 16, 0.3), (2e-5, 8, 0.1)]):
        make_job(sweep / str(n), [f"train.lr={lr}", f"lora.unet_lora_rank={rank}"], {"final": final})
    drawn = []
    scatter = compare.scatter_trials
    monkeypatch.setattr(
        compare, "scatter_trials", lambda ax, jobs, key, m: drawn.append(key) or scatter(ax, jobs, key, m)
    )
    plots = compare.plot_sweep(compare.find_jobs([sweep]))
    assert sorted(drawn) == ["lora.unet_lora_rank", "train.lr"]  # no line joins trials of unrelated settings
    assert set(plots) == {"plot_train-lr_final.png", "plot_lora-unet_lora_rank_final.png"}
    assert check_page_of(plots, tmp_path)["broken"] == []


def check_page_of(plots: dict, folder) -> dict:
    for name, png in plots.items():
        (folder / name).write_bytes(png)
    (folder / "p.html").write_text(
        "<title>p</title><table><tr><td>x</td></tr></table>" + "".join(f"<img src='{n}'>" for n in plots)
    )
    return check_page(folder / "p.html")
