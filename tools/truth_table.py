"""The truth table of an `evaluate` report on a synthetic store, as Markdown.

Per fold (target cell type) and over all folds: the noise floor (`oracle-truth` against the observed
change), `oracle-selection`, every baseline and every model, each as its test MSE of the mean change
against the observed change / against the planted one, and each model's Mann-Whitney q against
`linear` on both, then condition by condition (reports from 4c8aec2 on): the conditions on which it
beats `linear` and the Wilcoxon signed-rank q, on both. Reads `summary.json` of the report
directory; needs only Python's standard library.

Usage:  python3 tools/truth_table.py REPORT_DIR
"""
import json
import pathlib
import sys

ORDER = [
    "oracle-truth",
    "oracle-selection",
    "control",
    "training-mean",
    "cross-cell-type",
    "neighbours",
    "linear",
    "linear-pcs",
    "linear-neighbours",
]


def q_against(tests, metric, model, other):
    for t_metric, a, b, _u, _p, q in tests:
        if t_metric == metric and {a, b} == {model, other}:
            return q
    return None


def paired_against(paired, metric, model, other):
    """(conditions the model wins, conditions, q) of its paired test against `other`, or None."""
    for t in paired:
        if t["metric"] == metric and {t["a"], t["b"]} == {model, other}:
            wins = t["a_better"] if t["a"] == model else t["b_better"]
            return wins, t["conditions"], t["q"]
    return None


def main():
    summary = json.loads((pathlib.Path(sys.argv[1]) / "summary.json").read_text())
    names = list(summary["models"])
    rows = [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)
    folds = list(summary["per_cell_type"])
    paired = summary.get("paired", [])
    print("| | " + " | ".join(folds) + " | all folds | q vs linear (observed / planted) | beats linear on (observed / planted), paired q |")
    print("|---|" + "---|" * (len(folds) + 3))
    for name in rows:
        cells = []
        for table in [summary["per_cell_type"][f].get(name) for f in folds] + [summary["models"][name]]:
            cells.append("-" if table is None else f"{table['mse'][0]:.4f} / {table['mse_truth'][0]:.4f}")
        q = ""
        if name not in ORDER:
            qo, qt = (q_against(summary["tests"], m, name, "linear") for m in ("mse", "mse_truth"))
            q = f"{qo:.1e} / {qt:.1e}" if qo is not None and qt is not None else ""
        wins = ""
        if name not in ORDER[:7] and paired:
            po, pt = (paired_against(paired, m, name, "linear") for m in ("mse", "mse_truth"))
            if po and pt:
                wins = f"{po[0]} / {pt[0]} of {po[1]}, q {po[2]:.1e} / {pt[2]:.1e}"
        label = f"`{name}` (floor)" if name == "oracle-truth" else f"`{name}`"
        print(f"| {label} | " + " | ".join(cells) + f" | {q} | {wins} |")


if __name__ == "__main__":
    main()
