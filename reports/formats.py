"""The tables as CSV (one file each, wide: the values and what to read them with) and as LaTeX (booktabs)."""

from __future__ import annotations

import csv
import io
import math
import re

from pdm_bench.tables import COUNT_NOTES, FEW_PAIRS, Cell, Table

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return re.sub(r"[&%$#_{}~^\\]", lambda m: _LATEX_SPECIAL[m.group(0)], text)


def _number(value: float | None, digits: int, scale: float = 1.0) -> str:
    """A number for the CSV: empty when not measured, ``nan`` when measured on nothing."""
    if value is None:
        return ""
    return "nan" if not math.isfinite(value) else f"{value * scale:.{digits}f}"


def _note(name: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "" if value is None else "nan"
    return f"{value:.0f}" if name in COUNT_NOTES and float(value).is_integer() else f"{value:.4f}"


def column_name(group: str, defense: str) -> str:
    return f"{group} {defense}".strip()


def to_csv(table: Table) -> str:
    """Row label, then per column: value, interval (when the table has them), seeds, each note and the flags. A cell
    nobody measured is empty; one measured on no pairs is ``nan`` (flag ``no pairs``)."""
    note_names = list(dict.fromkeys(k for c in table.cells.values() for k in c.notes))
    has_interval = any(c.low is not None for c in table.cells.values())
    has_sd = any(c.sd is not None for c in table.cells.values())
    header = [table.row_label]
    for group, defense in table.columns:
        name = column_name(group, defense)
        header += [name, *([f"{name} ci_low", f"{name} ci_high"] if has_interval else []),
                   *([f"{name} sd"] if has_sd else []), f"{name} seeds",
                   *(f"{name} {n}" for n in note_names), f"{name} flag"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        record = [row]
        for column in table.columns:
            cell = table.cell(row, column)
            record.append(_number(cell.value, table.digits, table.scale))
            if has_interval:
                record += [_number(cell.low, table.digits + 1, table.scale), _number(cell.high, table.digits + 1, table.scale)]
            if has_sd:
                record.append(_number(cell.sd, table.digits + 1, table.scale) if cell.sd is not None else "")
            record.append(cell.seeds if cell.value is not None else "")
            record += [_note(n, cell.notes.get(n)) if cell.value is not None else "" for n in note_names]
            record.append("; ".join(cell.flags()))
        writer.writerow(record)
    return buffer.getvalue()


LATEX_NOTES = ("success", "transfer success", "TPR 1%", "TPR 5%", "TPR 10%", "pairs")  # shown beside a LaTeX value
_NUMBERED = re.compile(r"^Table \d+[a-z]?: ")


def _latex_cell(table: Table, cell: Cell) -> str:
    if cell.value is None:
        return "--"
    text = table.text(cell)
    if not math.isfinite(cell.value):
        return rf"\textit{{{text}}}"
    if cell.best:
        text = rf"\textbf{{{text}}}"
    if cell.low is not None and cell.high is not None:
        text += rf" {{\scriptsize[{_number(cell.low, table.digits, table.scale)}, {_number(cell.high, table.digits, table.scale)}]}}"
    if cell.sd is not None:
        text += rf" {{\scriptsize$\pm${_number(cell.sd, table.digits, table.scale)}}}"
    shown = [f"{cell.notes[name]:.0f}" if name in COUNT_NOTES else f"{cell.notes[name]:.2f}"
             for name in LATEX_NOTES if name in cell.notes and math.isfinite(cell.notes[name])]
    if shown:
        text += rf" {{\scriptsize({'; '.join(shown)})}}"
    if cell.flag:
        text += r"$^\dagger$"
    if cell.few_pairs:
        text += r"$^\ast$"
    return text


def to_latex(table: Table) -> str:
    """One booktabs table; best value per row in bold, intervals in brackets, success rate and pairs beside each
    AUC, a dagger where a criterion failed, an asterisk on fewer than 30 pairs; rows nobody measured are left out."""
    groups = list(dict.fromkeys(g for g, _ in table.columns))
    spec = "l" + "c" * len(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if any(groups):
        spans, start = [], 2
        header = [""]
        for group in groups:
            width = sum(1 for g, _ in table.columns if g == group)
            header.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
            spans.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(header) + r" \\", " ".join(spans)]
    lines.append(" & ".join([latex_escape(table.row_label)] + [latex_escape(d) for _, d in table.columns]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [table.cell(row, c) for c in table.columns]
        if all(cell.value is None for cell in cells):
            continue
        lines.append(" & ".join([latex_escape(row)] + [_latex_cell(table, cell) for cell in cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\caption{{{_caption(table)}}}", rf"\label{{tab:{table.key}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _caption(table: Table) -> str:
    """The title without its "Table N:" (LaTeX numbers tables itself) and the key to the cell marks used."""
    cells = list(table.cells.values())
    caption = latex_escape(_NUMBERED.sub("", table.title)) + "."
    if any(any(name in c.notes for name in LATEX_NOTES) for c in cells):
        caption += " In parentheses: " + "; ".join(latex_escape(n) for n in LATEX_NOTES if any(n in c.notes for c in cells)) + "."
    if any(c.value is None for c in cells):
        caption += " --: not run."
    if any(c.flag for c in cells):
        caption += (r" $^\dagger$: the budget schedule ended without meeting the paper's criterion (every attack succeeds, "
                    r"AUC $\le 0.5$; in the black box, on the proxy).")
    if any(c.few_pairs for c in cells):
        caption += rf" $^\ast$: fewer than {FEW_PAIRS} pairs."
    return caption


def tables_tex(tables: list[Table]) -> str:
    preamble = ("% pdm-bench tables; needs \\usepackage{booktabs}. Best value per row in bold; "
                "95% bootstrap intervals in brackets; +- the standard deviation over seeds.\n")
    return preamble + "\n".join(to_latex(t) for t in tables)
