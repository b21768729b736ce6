"""Few-shot sweeps: every run sets ``scenario.shots`` = K (``experiment=fewshot_tallrec``: arms × K × seeds).

A comparison row is an *arm* (model, strategy and any other swept setting) at one K; ``scenario.shots``
is always part of the row key. ``--reference`` names an arm, and each row is tested against that arm
at the same K on the seeds both ran: paired over test users for per-user metrics (GAUC), a paired
bootstrap over the test pairs for pooled AUC (:mod:`recexp.compare.pairs`); Holm's correction runs
over the rows of one K. Writes ``fewshot.md`` / ``fewshot.csv`` (arm, K, mean ± std over seeds,
Holm-corrected p, trainable parameters, train and eval seconds) and ``<metric>_vs_shots.png`` / ``.csv``
(mean ± std against K per arm; on ``scenario=tallrec`` over ml-100k, TALLRec's published AUC too).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recexp.compare.aggregate import column, ranks, smaller_is_better
from recexp.compare.load import Run
from recexp.compare.rows import Row, label
from recexp.compare.stats import BOOTSTRAP, SIGNIFICANCE_COLUMNS, significance
from recexp.compare.tables import fmt, fmt_cost
from recexp.errors import ConfigError

SHOTS = "scenario.shots"
# Test AUC on MovieLens-100K few-shot (K = 16 / 64 / 256 training samples) as published in Bao et al.,
# "TALLRec", RecSys 2023: their LLaMA-7B with LoRA, and the ID baselines of that paper's table.
PUBLISHED_SOURCE = "Bao et al., TALLRec, RecSys 2023"
TALLREC_LORA = "TALLRec LLaMA-7B LoRA"
TALLREC_PUBLISHED = {
    TALLREC_LORA: {16: 0.6724, 64: 0.6748, 256: 0.7198},
    "GRU4Rec": {16: 0.4907, 64: 0.4987, 256: 0.5289},
    "Caser": {16: 0.4968, 64: 0.5106, 256: 0.5420},
    "SASRec": {16: 0.5043, 64: 0.5048, 256: 0.5225},
}


def shots_of(run: Run) -> int | None:
    value = (run.config.get("scenario") or {}).get("shots")
    return None if value is None else int(value)


def is_fewshot(runs: list[Run]) -> bool:
    """True when every run trained on ``scenario.shots`` = K samples (K set, not null)."""
    return bool(runs) and all(shots_of(r) is not None for r in runs)


@dataclass
class Cell:
    arm: str  # the row label without K, e.g. lm_classifier/lora
    shots: int
    row: Row


@dataclass
class Plan:
    cells: list[Cell]  # the reference arm first, then row order: arm by arm, K ascending
    reference: str  # the reference arm
    references: dict[int, Row]  # K -> the reference arm's row at K
    notes: list[str] = field(default_factory=list)


def plan(rows: list[Row], wanted: str | None) -> Plan:
    """Rows as (arm, K) cells and the reference arm's row at each K; ``wanted``: an arm (or unique prefix),
    or a row label; None: the first arm."""
    cells = [Cell(label(tuple(p for p in r.key if p[0] != SHOTS)) or "?", int(float(dict(r.key)[SHOTS])), r)
             for r in rows]
    arms = list(dict.fromkeys(c.arm for c in cells))
    if wanted is None:
        chosen = arms[0]
    else:
        matches = ([a for a in arms if a == wanted] or [c.arm for c in cells if c.row.label == wanted]
                   or [a for a in arms if a.startswith(wanted)])
        if len(matches) != 1:
            problem = "matches several arms" if matches else "matches no arm"
            raise ConfigError(f"Reference {wanted!r} {problem}; arms: {', '.join(arms)}.")
        chosen = matches[0]
    cells = sorted(cells, key=lambda c: c.arm != chosen)  # the reference arm first, the rest in row order
    references = {c.shots: c.row for c in cells if c.arm == chosen}
    notes = [f"K={k}: no {chosen} row to test against; rows at this K are not tested."
             for k in sorted({c.shots for c in cells} - set(references))]
    return Plan(cells, chosen, references, notes)


def significance_by_shots(
    p: Plan, metrics: list[str], segments: list[str], test: str, alpha: float, resamples: int
) -> pd.DataFrame:
    """Each row against the reference arm at its K; Holm over the rows of one K, per segment and metric."""
    frames = []
    for k, reference in sorted(p.references.items()):
        rows = [c.row for c in p.cells if c.shots == k]
        frames.append(significance(rows, reference, metrics, segments, test, alpha, resamples))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)


def frame(p: Plan, summary: pd.DataFrame, tests: pd.DataFrame, metrics: list[str], segment: str) -> pd.DataFrame:
    """One line per (arm, K): mean, std and Holm p of each metric in ``segment``, seeds, cost."""
    by_row = summary.set_index("row")
    records = []
    for cell in p.cells:
        line = by_row.loc[cell.row.label]
        runs = list(cell.row.runs.values())
        record = {"arm": cell.arm, "shots": cell.shots, "reference": cell.row is p.references.get(cell.shots),
                  "row": cell.row.label, "n_seeds": int(line["n_seeds"])}
        for metric in metrics:
            name = column(segment, metric)
            found = tests[(tests.row == cell.row.label) & (tests.segment == segment) & (tests.metric == metric)]
            record[metric], record[f"{metric} std"] = line[name], line[f"{name} std"]
            record[f"{metric} test"] = found["test"].iloc[0] if len(found) else ""
            record[f"{metric} p_holm"] = float(found["p_holm"].iloc[0]) if len(found) else math.nan
            record[f"{metric} significant"] = bool(found["significant"].iloc[0]) if len(found) else False
        record["trainable params"] = line["trainable params"]
        for key, name in (("train_seconds", "train s"), ("eval_seconds", "eval s")):
            values = [float(v) for v in (r.cost(key) for r in runs) if v is not None]
            record[name] = float(np.mean(values)) if values else math.nan
        records.append(record)
    return pd.DataFrame.from_records(records)


def markdown(table: pd.DataFrame, metrics: list[str], reference: str, segment: str, test: str, alpha: float,
             resamples: int) -> str:
    head = ["arm", "K", "seeds"] + [h for m in metrics for h in (m + (" ↓" if smaller_is_better(m) else ""), f"p {m}")]
    head += ["trainable params", "train s", "eval s"]
    lines = [f"## Few-shot ({segment}, mean ± std over seeds)", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    best = {m: _best_per_k(table, m) for m in metrics}
    for i, line in table.iterrows():
        cells = [line["arm"].replace("|", "\\|") + (" [ref]" if line["reference"] else ""), str(line["shots"]),
                 str(line["n_seeds"])]
        for m in metrics:
            text = fmt(line[m]) if math.isnan(line[f"{m} std"]) else f"{fmt(line[m])} ± {fmt(line[f'{m} std'], like=line[m])}"
            cells += [(f"**{text}**" if best[m][i] else text) + ("†" if line[f"{m} significant"] else ""),
                      _p(line[f"{m} p_holm"])]
        cells += [fmt_cost("trainable params", line["trainable params"]), f"{line['train s']:.1f}", f"{line['eval s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    used = "; ".join(f"{m}: {_test_text(table, m, test, resamples)}" for m in metrics)
    lines += ["", f"Bold: best mean at each K. p: Holm-corrected p-value against `{reference}` at the same K, "
              f"over the seeds both ran (Holm over the rows of that K; {used}); † p < {alpha}. "
              "Seconds: mean training time and evaluation time (every stage: valid and test) per run.", ""]
    return "\n".join(lines)


def _test_text(table: pd.DataFrame, metric: str, test: str, resamples: int) -> str:
    name = next((t for t in table[f"{metric} test"] if t), test)
    if name == BOOTSTRAP:
        return f"paired bootstrap over test pairs, {resamples} resamples, so p >= {1 / (resamples + 1):.2g}"
    return f"{name} paired over test users"


def _best_per_k(table: pd.DataFrame, metric: str) -> list[bool]:
    best = [False] * len(table)
    for _, group in table.groupby("shots"):
        shown = [float(fmt(v)) if fmt(v) != "–" else math.nan for v in group[metric]]
        for index, place in zip(group.index, ranks(shown, smaller_is_better(metric))):
            best[index] = place == 1
    return best


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2g}" if value < 0.01 else f"{value:.3f}"


def points(p: Plan, summary: pd.DataFrame, metric: str, segment: str, published: bool) -> pd.DataFrame:
    """Plotted points: series, source (these runs | published), shots, mean, std, n_seeds, citation."""
    by_row = summary.set_index("row")
    name = column(segment, metric)
    records = [{"series": c.arm, "source": "these runs", "shots": c.shots, "mean": by_row.loc[c.row.label, name],
                "std": by_row.loc[c.row.label, f"{name} std"], "n_seeds": int(by_row.loc[c.row.label, f"{name} n"])}
               for c in p.cells]
    if published:
        records += [{"series": published_label(series), "source": "published", "shots": k, "mean": value,
                     "std": math.nan, "n_seeds": math.nan, "citation": PUBLISHED_SOURCE}
                    for series, values in TALLREC_PUBLISHED.items() for k, value in values.items()]
    return pd.DataFrame.from_records(records, columns=["series", "source", "shots", "mean", "std", "n_seeds", "citation"])


def published_label(series: str) -> str:
    return f"{series} (published)" if series == TALLREC_LORA else f"{series} (published in the TALLRec paper)"


def plot(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """Mean ± std over seeds against K (log axis) per arm; published points as dashed (TALLRec) and
    dotted grey (the TALLRec paper's ID baselines) lines."""
    figure = Figure(figsize=(9.0, 4.8), layout="constrained")
    ax = figure.subplots()
    ours = table[table.source == "these runs"]
    arms = list(dict.fromkeys(ours.series))
    for i, arm in enumerate(arms):
        line = ours[ours.series == arm].sort_values("shots")
        nudge = 2.0 ** (0.04 * (i - (len(arms) - 1) / 2))  # side by side, so error bars stay apart
        ax.errorbar(line["shots"] * nudge, line["mean"], yerr=np.nan_to_num(line["std"].to_numpy(float)),
                    marker="osD^v<>ph"[i % 9], color=f"C{i % 10}", capsize=2, label=arm)  # 90 distinct looks
    published = table[table.source == "published"]
    for series, marker in zip(dict.fromkeys(published.series), ("*", "x", "+", "1", "2", "3")):
        line = published[published.series == series].sort_values("shots")
        lead = series.startswith(TALLREC_LORA)
        ax.plot(line["shots"], line["mean"], "--" if lead else ":", marker=marker, color="black" if lead else "0.55",
                lw=1.8 if lead else 1.0, markersize=11 if lead else 6, label=series)
    if len(published):
        figure.text(0.01, -0.02, f"published: test AUC on ml-100k, {PUBLISHED_SOURCE}", fontsize=7, color="0.3")
    shots = sorted(set(table["shots"]))
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.minorticks_off()
    ax.set_xlabel("K training samples (scenario.shots, log scale)")
    ax.set_ylabel(f"test {metric}" + (" (lower is better)" if smaller_is_better(metric) else ""))
    if metric in ("auc", "gauc"):
        ax.axhline(0.5, color="0.85", lw=1, zorder=0)
    ax.set_title(f"test {metric} against K, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    return path


def on_tallrec_ml100k(p: Plan) -> bool:
    runs = [r for c in p.cells for r in c.row.runs.values()]
    return all(str((r.config.get("scenario") or {}).get("_target_", "")).endswith("TallRecScenario")
               and (r.config.get("dataset") or {}).get("name") == "ml-100k" for r in runs)


def write(p: Plan, summary: pd.DataFrame, tests: pd.DataFrame, metrics: list[str], segment: str, plot_metric: str,
          test: str, alpha: float, resamples: int, out_dir: Path) -> dict[str, Path]:
    """fewshot.md, fewshot.csv, <metric>_vs_shots.png and <metric>_vs_shots.csv in ``out_dir``."""
    table = frame(p, summary, tests, metrics, segment)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", plot_metric) + "_vs_shots"
    files = {"fewshot": out_dir / "fewshot.md", "fewshot_csv": out_dir / "fewshot.csv",
             "fewshot_points": out_dir / f"{stem}.csv"}
    files["fewshot"].write_text(markdown(table, metrics, p.reference, segment, test, alpha, resamples), encoding="utf-8")
    table.to_csv(files["fewshot_csv"], index=False)
    published = plot_metric == "auc" and segment == "all" and on_tallrec_ml100k(p)
    shown = points(p, summary, plot_metric, segment, published)
    shown.to_csv(files["fewshot_points"], index=False)
    files["fewshot_plot"] = plot(shown, plot_metric, out_dir / f"{stem}.png")
    return files

