"""The comparison table as Markdown, LaTeX (booktabs) and CSV.

Cells read ``mean ± std`` over seeds. Per metric column the best mean is bold and the second best
underlined, in the metric's direction; ``†`` marks a significant difference from the reference row.
A cell whose runs record the metric as not computed there reads ``n/c``, its reason in a line under the table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from recexp.compare.aggregate import COST_COLUMNS, DEFAULT_COSTS, column, constant_by_construction, ranks, smaller_is_better
from recexp.evaluate import parse_metric

DAGGER = "†"
NOT_COMPUTED = "n/c"  # a cell whose runs record the metric as not computed (``not_computed`` in results.json)


@dataclass(frozen=True)
class TableSpec:
    metrics: list[str]
    segments: list[str]
    reference: str  # label of the reference row
    test: str  # wilcoxon | ttest
    alpha: float
    keep_constant: bool = False  # also show columns constant by construction (APLT inside head ...)
    carried: dict[str, frozenset[str]] | None = None  # segment -> metrics some run reports there (None: all)
    reference_rows: frozenset[str] = frozenset()  # labels marked [ref] besides ``reference`` (few-shot: one per K)
    resamples: int = 1000  # paired bootstrap replicates behind pooled AUC's marks
    not_computed: dict[tuple[str, str], str] = field(default_factory=dict)  # (row, seg/metric) -> why: shown n/c
    costs: tuple[str, ...] = DEFAULT_COSTS  # cost keys shown (COST_COLUMNS), in order

    def is_reference(self, row: str) -> bool:
        return row == self.reference or row in self.reference_rows

    def reported(self, segment: str, metric: str) -> bool:
        return self.carried is None or metric in self.carried.get(segment, frozenset())

    def shown(self, segment: str) -> list[str]:
        """The metrics shown for ``segment``: those reported there, less those its definition fixes."""
        return [m for m in self.metrics if self.reported(segment, m)
                and (self.keep_constant or constant_by_construction(segment, m) is None)]

    def omitted(self) -> list[str]:
        """``segment/metric = value`` of each column left out as constant by construction."""
        return [f"{column(s, m)} = {constant_by_construction(s, m)}"
                for s in self.segments for m in self.metrics if self.reported(s, m) and m not in self.shown(s)]


def fmt(value: float, like: float | None = None) -> str:
    """4 decimals below 10, 2 below 100, 1 above (judged on ``like`` if given); an en dash for missing."""
    if value is None or math.isnan(value):
        return "–"
    size = abs(value if like is None or math.isnan(like) else like)
    digits = 4 if size < 10 else 2 if size < 100 else 1
    return f"{value:.{digits}f}"


def fmt_cost(name: str, value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    if name == "trainable params":
        for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= size:
                return f"{value / size:.1f}{unit}"
        return f"{value:.0f}"
    return f"{value:.1f}" if name in ("train s", "eval s") else f"{value:.0f}"


def metric_columns(spec: TableSpec) -> list[str]:
    return [column(s, m) for s in spec.segments for m in spec.shown(s)]


def cell_marks(summary: pd.DataFrame, significance: pd.DataFrame, spec: TableSpec) -> dict[str, list[tuple]]:
    """Per metric column: for each row (rank 1/2/None, significant vs reference; never for an n/c cell)."""
    significant = {
        (r.row, column(r.segment, r.metric)): bool(r.significant) for r in significance.itertuples(index=False)
    }
    marks = {}
    for name in metric_columns(spec):
        metric = name.split("/", 1)[1]
        shown = [float(fmt(v)) if fmt(v) != "–" else math.nan for v in summary[name]]
        places = ranks(shown, smaller_is_better(metric))
        marks[name] = [(p, significant.get((row, name), False) and (row, name) not in spec.not_computed)
                       for p, row in zip(places, summary["row"])]
    return marks


def header_name(metric: str) -> str:
    return f"{metric} ↓" if smaller_is_better(metric) else metric


def markdown(summary: pd.DataFrame, significance: pd.DataFrame, spec: TableSpec) -> str:
    marks = cell_marks(summary, significance, spec)
    names = metric_columns(spec)
    costs = [COST_COLUMNS[c] for c in spec.costs]
    head = ["row", "seeds"] + [f"{header_name(n.split('/', 1)[1])} ({n.split('/', 1)[0]})" for n in names]
    head += costs
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for i, rec in summary.iterrows():
        label = f"{rec['row']} [ref]" if spec.is_reference(rec["row"]) else rec["row"]
        cells = [label.replace("|", "\\|"), str(rec["n_seeds"])]
        for name in names:
            text = _cell(spec, rec, name)
            place, sig = marks[name][i]
            text = f"**{text}**" if place == 1 else f"<u>{text}</u>" if place == 2 else text
            cells.append(text + (DAGGER if sig else ""))
        cells += [fmt_cost(c, rec[c]) for c in costs]
        lines.append("| " + " | ".join(cells) + " |")
    note = not_computed_note(spec)
    return "\n".join(lines) + "\n\n" + legend(spec) + "\n" + (f"\n{note}\n" if note else "")


def _mean_std(mean: float, std: float) -> str:
    return fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std, like=mean)}"


def _cell(spec: TableSpec, rec: pd.Series, name: str) -> str:
    """``mean ± std``, or n/c where the row's runs record the metric as not computed."""
    return NOT_COMPUTED if (rec["row"], name) in spec.not_computed else _mean_std(rec[name], rec[f"{name} std"])


def not_computed_note(spec: TableSpec) -> str:
    """The line under a table naming each n/c cell and why, by row and reason; "" when there is none."""
    shown = set(metric_columns(spec))
    groups: dict[tuple[str, str], list[str]] = {}
    for (row, name), why in spec.not_computed.items():
        if name in shown:
            groups.setdefault((row, why), []).append(name)
    parts = [f"{row}: {', '.join(names)} ({why})" for (row, why), names in groups.items()]
    return f"{NOT_COMPUTED}: not computed, as the runs record it; " + "; ".join(parts) + "." if parts else ""


COST_WORDS = {"trainable_params": "trainable parameters", "train_seconds": "training seconds", "peak_memory_mb": "peak memory (MB)",
              "eval_seconds": "evaluation seconds", "encoder_tokens_per_second": "encoder tokens a training second",
              "encoder_encode_tokens_per_second": "encoder tokens an embedding second (none where a run read its cache)"}


def _listed(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else "none"


def legend(spec: TableSpec) -> str:
    omitted = spec.omitted()
    left_out = f" Left out, constant by construction: {', '.join(omitted)}." if omitted else ""
    pooled_auc = any(parse_metric(m)[0].name == "auc" for m in spec.metrics)
    bootstrap = f"; pooled auc: paired bootstrap over test pairs, {spec.resamples} resamples" if pooled_auc else ""
    return (
        f"Mean ± sample std over seeds (test split). Per column the best mean is **bold** and the second "
        f"best <u>underlined</u>; ↓ marks metrics where smaller is better. {DAGGER}: differs from "
        f"`{spec.reference}` at Holm-corrected p < {spec.alpha} ({spec.test}, paired over test users of "
        f"matched seeds{bootstrap}). Cost: {_listed([COST_WORDS[c] for c in spec.costs])}, seed means."
        + left_out
    )


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def latex(summary: pd.DataFrame, significance: pd.DataFrame, spec: TableSpec) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``): segments span their metric columns."""
    marks = cell_marks(summary, significance, spec)
    groups = [(s, spec.shown(s)) for s in spec.segments if spec.shown(s)]
    costs = [COST_COLUMNS[c] for c in spec.costs]
    n_cost = len(costs)
    lines = [
        r"\begin{table}[t]", r"\centering", r"\small",
        r"\begin{tabular}{l r " + " ".join("r" * len(m) for _, m in groups) + " " + "r" * n_cost + "}",
        r"\toprule",
    ]
    spans = [rf"\multicolumn{{{len(m)}}}{{c}}{{{tex_escape(s)}}}" for s, m in groups]
    lines.append(" & & " + " & ".join(spans) + " & " + rf"\multicolumn{{{n_cost}}}{{c}}{{cost}} \\")
    rules, start = [], 3
    for _, shown in groups + [("cost", costs)]:
        rules.append(f"\\cmidrule(lr){{{start}-{start + len(shown) - 1}}}")
        start += len(shown)
    lines.append(" ".join(rules))
    metric_heads = [_tex_metric(m) for _, shown in groups for m in shown]
    lines.append(" & ".join(["row", "seeds"] + metric_heads + [tex_escape(c) for c in costs]) + r" \\")
    lines.append(r"\midrule")
    for i, rec in summary.iterrows():
        cells = [tex_escape(rec["row"]) + (" [ref]" if spec.is_reference(rec["row"]) else ""), str(rec["n_seeds"])]
        for name in metric_columns(spec):
            place, sig = marks[name][i]
            text = _cell(spec, rec, name).replace(" ± ", r"$\pm$").replace("–", "--")
            text = rf"\textbf{{{text}}}" if place == 1 else rf"\underline{{{text}}}" if place == 2 else text
            cells.append(text + (r"$^\dagger$" if sig else ""))
        cells += [tex_escape(fmt_cost(c, rec[c])).replace("–", "--") for c in costs]
        lines.append(" & ".join(cells) + r" \\")
    words = " ".join(filter(None, (legend(spec), not_computed_note(spec))))
    caption = tex_escape(words.replace("**", "").replace("<u>", "").replace("</u>", "").replace("`", ""))
    for text, tex in (("<", "$<$"), ("±", r"$\pm$"), ("↓", r"$\downarrow$"), (DAGGER, r"$^\dagger$")):
        caption = caption.replace(text, tex)
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _tex_metric(metric: str) -> str:
    return tex_escape(metric) + (r" $\downarrow$" if smaller_is_better(metric) else "")


def csv_frame(summary: pd.DataFrame, significance: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The summary numbers plus, per metric column, the Holm-corrected p-value against the reference."""
    unreported = [f"{column(s, m)}{tail}" for s in spec.segments for m in spec.metrics if not spec.reported(s, m)
                  for tail in ("", " std", " n")]
    frame = summary.drop(columns=[c for c in unreported if c in summary.columns])
    frame.insert(1, "reference", frame["row"].map(spec.is_reference))
    for name in metric_columns(spec):
        segment, metric = name.split("/", 1)
        sub = significance[(significance.segment == segment) & (significance.metric == metric)]
        frame[f"{name} p_holm"] = frame["row"].map(dict(zip(sub.row, sub.p_holm)))
    if spec.not_computed:
        shown = set(metric_columns(spec))
        for row, name in spec.not_computed:
            if name in shown:
                frame[name] = frame[name].astype(object)
                frame.loc[frame["row"] == row, name] = NOT_COMPUTED
        frame["not computed"] = frame["row"].map(lambda row: "; ".join(
            f"{name}: {why}" for (r, name), why in spec.not_computed.items() if r == row and name in shown))
    return frame
