"""The decision page (harness.report.decision) on the synthetic run, whose answers follow from the laws
in tests/test_report_fixtures.py, and its place and folding in report.html."""

import re

import numpy as np
import pandas as pd
import pytest

from harness.report import decision, html, render
from harness.report.analysis import Findings
from harness.report.data import Results
from tests import test_report_fixtures as fx

FWD = "H100 80GB HBM3, bfloat16, forward, causal"


@pytest.fixture(scope="module")
def found():
    rows = fx.full_rows()
    return {d.config: d for d in decision.decisions(Findings.compute(rows), rows)}


def test_one_decision_per_configuration_headline_first(found):
    assert len(found) == 5 and list(found)[0] == FWD


def test_the_glance_names_the_fastest_exact_the_fastest_and_the_least_memory(found):
    d = found[FWD]
    assert d.lengths == [1024, 4096, 16384]
    glance = d.glance.set_index("N")
    # 1024: sparse-bigbird 0.712 ms < flash-sdpa 0.756 < vanilla 1.024 < linear 2.01; bigbird is not exact.
    assert glance.loc[1024, "fastest"] == "sparse-bigbird (0.712 ms)"
    assert glance.loc[1024, "fastest exact kernel"] == "flash-sdpa (0.756 ms)"
    # 16384: vanilla out of memory; linear 2.16 ms < flash-sdpa 4.6; flash-sdpa the least memory.
    assert glance.loc[16384, "fastest"] == "linear (2.16 ms)"
    assert glance.loc[16384, "fastest exact kernel"] == "flash-sdpa (4.6 ms)"
    assert glance.loc[16384, "least peak memory"] == "flash-sdpa (420 MiB)"  # 0.41 GiB
    assert glance.loc[16384, "ran"] == "3 variants"


def test_the_ranking_orders_by_the_longest_length_each_ran(found):
    ranking = found[FWD].ranking
    assert list(ranking.variant) == ["linear", "flash-sdpa", "sparse-bigbird", "vanilla"]
    vanilla = ranking.set_index("variant").loc["vanilla"]
    assert vanilla["N = 16384"] == "" and vanilla["N = 4096"] == "4.1 ms"
    # Every ranked variant has the three learned tasks: a mean for each, over all three.
    means = ranking.set_index("variant")["mean (all tasks)"].astype(float)
    assert set(ranking.columns) >= {"accuracy: mqar", "accuracy: selective_copy", "accuracy: passkey"}
    assert means["vanilla"] > means["sparse-bigbird"] > means["linear"]


def test_accuracy_is_compared_over_one_task_set_never_a_mean_of_fewer_tasks():
    accuracy = pd.DataFrame({"variant": ["a", "a", "b", "c"], "task": ["mqar", "copy", "mqar", "copy"],
                             "accuracy": [0.9, 0.7, 1.0, 0.2]})
    table = decision.accuracy_columns(accuracy, ["a", "b", "c", "d"])
    assert list(table["mean (all tasks)"]) == ["0.800", "lacks copy", "lacks mqar", ""]
    assert list(table["accuracy: mqar"]) == ["0.9", "1", "", ""]


def test_latency_relative_to_the_baseline_the_rows_mark(found):
    d = found[FWD]
    assert d.baseline == "vanilla" and d.baseline_note == ""
    assert d.relative.loc["flash-sdpa", 1024] == pytest.approx(0.756 / 1.024)
    assert d.relative.loc["vanilla"].dropna().eq(1.0).all() and np.isnan(d.relative.loc["vanilla", 16384])


def test_rows_written_before_the_baseline_column_take_the_registry_s():
    rows = fx.full_rows().drop(columns=["baseline"])
    d = decision.decisions(Findings.compute(rows), rows)[0]
    assert d.baseline == "vanilla" and d.baseline_note == ""  # vanilla is the registry's baseline


def test_without_a_baseline_that_ran_a_named_exact_variant_stands_in():
    rows = fx.full_rows()
    rows = rows[rows.variant != "vanilla"].drop(columns=["baseline"])
    d = decision.decisions(Findings.compute(rows), rows)[0]
    # flash-sdpa ran at all 5 lengths: it stands in, and the page says so.
    assert d.baseline == "flash-sdpa" and "mark no baseline" in d.baseline_note


def test_crossovers_form_a_matrix_row_beats_column(found):
    d = found[FWD]
    crossing = next(c for c in d.crossings if (c.faster, c.slower) == ("linear", "flash-sdpa"))
    assert d.crossovers.loc["linear", "flash-sdpa"] == pytest.approx(crossing.estimate)
    assert 4096 < crossing.estimate < 8192 and np.isnan(d.crossovers.loc["flash-sdpa", "linear"])
    assert len(d.crossovers.stack().dropna()) == len(d.crossings)


def test_unsupported_variants_are_one_count_with_their_reason(found):
    table = found[FWD].unsupported
    assert table.to_dict("records") == [{"reason": "performer: bfloat16 kernels not built for this device",
                                         "variants": "performer", "count": 1}]


def test_noisy_cells_are_marked_and_a_winner_within_noise_says_so(tmp_path):
    rows = [r for r in fx.throughput_rows()
            if r["mode"] == "fwd" and r["causal"] and r["dtype"] == "bfloat16"]
    for r in rows:
        if r["variant"] == "flash-sdpa" and r["seq_len"] == 1024:
            r.update(noisy=True, median_ci=0.2)  # its interval now covers sparse-bigbird's median
    loaded = Results.load(fx.write_run(tmp_path / "run", rows)).rows
    d = decision.decisions(Findings.compute(loaded), loaded)[0]
    glance = d.glance.set_index("N")
    assert glance.loc[1024, "fastest"] == "sparse-bigbird (0.712 ms), within noise of flash-sdpa"
    assert glance.loc[1024, "fastest exact kernel"] == f"flash-sdpa (0.756 ms{decision.NOISY_MARK})"
    assert d.ranking.set_index("variant").loc["flash-sdpa", "N = 1024"].endswith(decision.NOISY_MARK)


def test_the_heatmap_colours_faster_green_slower_red_and_even_white():
    assert decision.heat_color(1.0) == "#ffffff"
    assert decision.heat_color(1 / 8) == "#1a9850" and decision.heat_color(8.0) == "#d73027"
    assert decision.heat_color(1 / 64) == decision.heat_color(1 / 8)  # saturates


# --- in report.html --------------------------------------------------------------------------------------

def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def test_the_decision_page_comes_first_then_correctness_without_failures():
    page = fx.built_report().html.read_text()
    assert sections(page)[:3] == ["decision", "correctness", "overview"]
    body = page[page.index('<section id="decision">'):page.index('<section id="correctness">')]
    assert "Latency relative to vanilla" in body and "row beats column" in body
    assert "1 unsupported (performer: bfloat16 kernels not built for this device): performer" in body
    assert "<li>" not in body  # no bullet list of crossovers


def test_a_failing_correctness_gate_stays_before_the_decision_page():
    class Failed:
        failed = True

        def html(self):
            return "gate"

    assert [a for a, _, _ in render.front(Failed(), "page")] == ["correctness", "decision"]


def test_long_tables_fold_away_and_short_ones_show():
    long = pd.DataFrame({"n": range(html.MAX_VISIBLE_ROWS + 1)})
    assert html.table(long).startswith("<details><summary>41 rows")
    assert not html.table(long.head(40)).startswith("<details>")
    assert html.table(long.head(3), fold="Environment").startswith("<details><summary>Environment")


def test_largest_feasible_n_folds_with_the_unsupported_counted_and_their_reasons():
    page = fx.built_report().html.read_text()
    throughput = page[page.index('<section id="throughput">'):]
    assert "<details><summary>Largest feasible N: " in throughput
    assert re.search(r"\d+ unsupported \(configuration x variant\), left out below: 1 backward not "
                     r"implemented for the block-sparse kernel \(sparse-bigbird\); \d+ performer: bfloat16 "
                     r"kernels not built for this device \(performer\)", throughput)


def test_merged_from_is_a_table_not_json():
    envs = {"run/a": {"device": "cpu", "merged_from": [
        {"run": "/runs/p1", "rows_kept": 52, "commit": "a46dde"}, {"run": "/runs/p2", "rows_kept": 20}]}}
    tables = render.merged_sources(envs)
    assert list(tables["run/a"].columns) == ["run", "rows_kept", "commit"]
    assert list(tables["run/a"].rows_kept) == [52, 20]
    results = Results(pd.DataFrame({"run_dir": []}), envs)
    assert "merged_from" not in set(render.environment_table(results, None)[""])
