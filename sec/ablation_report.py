"""Reports of SEC's ablation benchmarks (sec.ablation): aggregation of run records over seeds, the
markdown table (mean ± std, without and with the CRF, and on the boundary band when every run has
it) and the bar chart. Records are sec.ablation.run_one's: mIoU fields are fractions; rows hold
percentages.
"""
import numpy as np

from sec.ablation import BOUNDARY_BAND_PX, PERCENT


def mean_std(values):
    """(mean, sample std (ddof 1; None for a single value), count) of a list of numbers."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("need at least one value")
    std = float(values.std(ddof=1)) if values.size > 1 else None
    return float(values.mean()), std, int(values.size)


MIOU_FIELDS = ("miou", "miou_crf", "miou_band", "miou_band_crf")


def aggregate(records):
    """Per variant key: mean/std (in %) of mIoU without and with CRF, and on the boundary band
    when every record has it, and the mean times."""
    rows = {}
    for key in sorted({r["variant"] for r in records}):
        mine = [r for r in records if r["variant"] == key]
        row = {"seeds": sorted(r["seed"] for r in mine)}
        for field_name in (f for f in MIOU_FIELDS if all(f in r for r in mine)):
            mean, std, _ = mean_std([PERCENT * r[field_name] for r in mine])
            row[field_name] = {"mean": mean, "std": std}
        for field_name in ("train_s", "eval_s", "eval_crf_s"):
            row[field_name] = mean_std([r[field_name] for r in mine])[0]
        rows[key] = row
    return rows


def plus_minus(stat):
    """'mean ± std' of a {"mean", "std"} dict, one decimal ('mean' alone without a std)."""
    return f"{stat['mean']:.1f}" if stat["std"] is None else f"{stat['mean']:.1f} ± {stat['std']:.1f}"


TABLE_HEAD = ["| configuration | mIoU % | mIoU % with CRF | seeds | time per run, s (train + eval + CRF eval) |",
              "|---|---|---|---|---|"]


BAND_HEAD = (f" boundary band mIoU % (±{BOUNDARY_BAND_PX} px) | with CRF |", "---|---|")


def table_lines(rows, sections):
    """Markdown table lines of the variant rows: sections are (title, [(row label, key)]);
    rows without results and sections left empty are skipped. Boundary-band columns when every
    row has them."""
    band = bool(rows) and all("miou_band" in r and "miou_band_crf" in r for r in rows.values())
    head, rule = TABLE_HEAD
    if band:
        head, rule = head[:head.index(" seeds |")] + BAND_HEAD[0] + head[head.index(" seeds |"):], rule + BAND_HEAD[1]
    lines = [head, rule]
    for section, entries in sections:
        entries = [(label, key) for label, key in entries if key in rows]
        if entries:
            lines.append(padded_row(lines, f"**{section}**"))
        for label, key in entries:
            r = rows[key]
            scores = [r["miou"], r["miou_crf"]] + ([r["miou_band"], r["miou_band_crf"]] if band else [])
            lines.append(f"| {label} | {' | '.join(plus_minus(stat) for stat in scores)} | {len(r['seeds'])} | "
                         f"{r['train_s']:.0f} + {r['eval_s']:.0f} + {r['eval_crf_s']:.0f} |")
    return lines


def padded_row(lines, *cells, fill=""):
    """A markdown row of the table whose header is lines[0]: the cells, then `fill` to its width."""
    columns = lines[0].count("|") - 1
    cells = list(cells) + [fill] * (columns - len(cells))
    return "| " + " | ".join(cells) + " |"


def chart_entries(rows, sections):
    """(label, plain stat, CRF stat) of every variant with results once, in table order (a key
    listed in several sections only in its first)."""
    seen, entries = set(), []
    for section, section_rows in sections:
        for label, key in section_rows:
            if key not in seen and key in rows:
                seen.add(key)
                entries.append((f"{label} [{section.split(' (')[0]}]", rows[key]["miou"], rows[key]["miou_crf"]))
    return entries


def bar_chart(entries, path, xlabel):
    """Horizontal bars, without and with CRF, std error bars. entries: (label, plain stat, CRF
    stat or None), stats {"mean", "std"} in %."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _, _ in entries]
    y = np.arange(len(labels))[::-1]
    height = 0.4
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(labels) + 1.5))
    for offset, index, name in ((height / 2, 1, "no CRF"), (-height / 2, 2, "CRF at test time")):
        kept = [(yy, entry[index]) for yy, entry in zip(y, entries) if entry[index] is not None]
        ax.barh([yy + offset for yy, _ in kept], [s["mean"] for _, s in kept], height,
                xerr=[s["std"] or 0.0 for _, s in kept], capsize=3, label=name)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, 100)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
