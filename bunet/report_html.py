"""The validation study as one self-contained HTML page: summary tables, plots as embedded PNG
(matplotlib, no display needed), the three worst cases with overlays, and every case's figures."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

COLORS = {"secure": "#d62728", "float": "#1f77b4", "fixed": "#2ca02c", "truth": "#2ca02c"}


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def dice_plot(cases: list[dict], plain: bool) -> str:
    """Per case: secure Dice (and float Dice) against the labels, cases sorted by secure Dice;
    beside it secure against float, one point per case."""
    plt = _plt()
    order = sorted(range(len(cases)), key=lambda i: cases[i]["secure"]["dice"])
    sec = np.array([cases[i]["secure"]["dice"] for i in order])
    fig, axes = plt.subplots(1, 2 if plain else 1, figsize=(11 if plain else 6, 3.6), squeeze=False)
    ax = axes[0][0]
    pos = np.arange(len(order))
    ax.plot(pos, sec, "o", color=COLORS["secure"], ms=5, label="secure")
    if plain:
        fl = np.array([cases[i]["float"]["dice"] for i in order])
        ax.plot(pos, fl, "x", color=COLORS["float"], ms=6, label="float (plaintext)")
    ax.set_xlabel("case (sorted by secure Dice)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("Dice against the labels")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    if plain:
        ax = axes[0][1]
        ax.plot([0, 1], [0, 1], "-", color="#999", lw=1)
        ax.plot(fl, sec, "o", color=COLORS["secure"], ms=5, alpha=0.8)
        ax.set_xlabel("float Dice")
        ax.set_ylabel("secure Dice")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_title("secure vs float, per case")
    return _png(fig)


def bland_altman_plot(pairs: list[tuple[str, Sequence[float], Sequence[float], dict]], unit: str) -> str:
    """One panel per (title, a, b, limits): difference a - b against the mean of a and b."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.6), squeeze=False)
    for ax, (title, a, b, ba) in zip(axes[0], pairs, strict=True):
        a, b = np.asarray(a, float), np.asarray(b, float)
        ax.plot((a + b) / 2, a - b, "o", color=COLORS["secure"], ms=5, alpha=0.8)
        for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
            if ba.get(key) is not None:
                ax.axhline(ba[key], color="#444", ls=style, lw=1)
                ax.annotate(
                    f"{key.replace('_', ' ')} {ba[key]:.4g}",
                    (1.0, ba[key]),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xlabel(f"mean lesion volume ({unit})")
        ax.set_ylabel(f"difference ({unit})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    return _png(fig)


def overlay_plot(name: str, view: dict[str, np.ndarray], dice: float) -> str:
    """The case's image, the labels' outline (green), the secure mask (red, filled) and the float
    mask's outline (blue, dashed) when there is one."""
    plt = _plt()
    img = view["image"]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.7))
    for ax in axes:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title(f"case {name}: image", fontsize=9)
    ax = axes[1]
    sec = np.ma.masked_where(~view["secure"], np.ones(img.shape))
    from matplotlib.colors import ListedColormap

    ax.imshow(sec, cmap=ListedColormap([COLORS["secure"]]), alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
    if view["truth"].any():
        ax.contour(view["truth"].astype(float), levels=[0.5], colors=[COLORS["truth"]], linewidths=1.2)
    if "float" in view and view["float"].any():
        ax.contour(
            view["float"].astype(float), levels=[0.5], colors=[COLORS["float"]], linewidths=1.0, linestyles="dashed"
        )
    legend = "secure (red fill), labels (green)" + (", float (blue dashed)" if "float" in view else "")
    ax.set_title(f"{legend}; Dice {dice:.3f}", fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------------------------------------


def _fmt(v: Any, fmt: str = ".3f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return format(v, fmt)
    return html.escape(str(v))


def _ci(d: dict, fmt: str = ".3f") -> str:
    return f"{_fmt(d['mean'], fmt)} [{_fmt(d['low'], fmt)}, {_fmt(d['high'], fmt)}]"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.note{background:#fff6dd;padding:8px;border-left:4px solid #e0b000}
.ok{color:#1a7f1a;font-weight:bold}.bad{color:#b00;font-weight:bold}img{max-width:100%}"""


def render(report: dict, scored: list[Any]) -> str:
    """The page (a string) for a report dict and the scored cases (for the overlays)."""
    s, m = report["summary"], report["model"]
    plain = report["plain_eval"]["available"]
    unit_v, unit_h = report["units"]["volume"], report["units"]["hd95"]
    parts = [
        f"<h1>BUNET validation study — {html.escape(m['name'])}</h1>",
        f"<p>{s['cases']} {report['case_kind']} cases from <code>{html.escape(report['cases_path'])}</code>, "
        f"labels <code>{html.escape(report['truth_path'])}</code>; server {html.escape(report['server'])}; "
        f"model ring Z<sub>2<sup>{m['ring_bits']}</sup></sub>, {m['frac_bits']} fraction bits, input "
        f"{m['input_size'][0]}x{m['input_size'][1]}; {report['created_utc']}, "
        f"bunet {report['bunet_version']}.</p>",
    ]
    if not plain:
        parts.append(
            f'<p class="note">No plaintext comparison ({html.escape(report["plain_eval"]["note"])}): '
            "this report compares the secure masks with the labels only.</p>"
        )
    rows = []
    for e in ("secure", "float", "fixed"):
        if e in s:
            x = s[e]
            rows.append(
                [
                    e,
                    _ci(x["dice_mean"]),
                    _fmt(x["dice_pooled"]),
                    _fmt(x["iou_mean"]),
                    _fmt(x["hd95_median"], ".2f"),
                    _fmt(x["hd95_mean"], ".2f"),
                    str(x["hd95_undefined_cases"]),
                ]
            )
    parts += [
        "<h2>Against the labels</h2>",
        _table(
            [
                "engine",
                "mean Dice [95% CI]",
                "pooled Dice",
                "mean IoU",
                f"median HD95 ({unit_h})",
                f"mean HD95 ({unit_h})",
                "HD95 undefined",
            ],
            rows,
        ),
        "<p>CI: BCa bootstrap over cases (9,999 resamples, fixed seed). HD95 is undefined for a case where "
        "exactly one of mask and labels is empty.</p>",
    ]
    if plain:
        eq, t = s["secure_equals_fixed_point"], s["secure_vs_float_dice_tests"]
        cls = "ok" if eq["pixels_differ"] == 0 else "bad"
        w, k = t["wilcoxon"], t["ks_2samp"]
        parts += [
            "<h2>Secure against plaintext</h2>",
            f'<p class="{cls}">secure == fixed-point reference: {eq["cases_equal"]} of {eq["cases"]} cases '
            f"({eq['pixels_differ']:,} of {eq['pixels_compared']:,} pixels differ)</p>",
            _table(
                ["figure", "value"],
                [
                    ["secure − float Dice, mean [95% CI]", _ci(s["dice_difference_secure_minus_float"], "+.4f")],
                    [
                        "Wilcoxon signed-rank (paired) statistic / p",
                        f"{_fmt(w['statistic'], '.4g')} / {_fmt(w['p_value'], '.4g')}"
                        + (f" — {html.escape(w['note'])}" if w.get("note") else ""),
                    ],
                    [
                        "Kolmogorov-Smirnov (two-sample) D / p",
                        f"{_fmt(k['statistic'], '.4g')} / {_fmt(k['p_value'], '.4g')}",
                    ],
                    [
                        "pixel agreement secure vs float, mean / min",
                        f"{_fmt(s['secure_float_pixel_agreement']['mean'], '.5f')} / "
                        f"{_fmt(s['secure_float_pixel_agreement']['min'], '.5f')}",
                    ],
                ],
            ),
        ]
    cases = report["cases"]
    parts += ["<h2>Dice per case</h2>", dice_plot(cases, plain)]
    sec_v = [c["secure"]["volume"] for c in cases]
    pairs = []
    if plain:
        pairs.append(
            ("secure − float", sec_v, [c["float"]["volume"] for c in cases], s["bland_altman_volume_secure_vs_float"])
        )
    pairs.append(
        ("secure − labels", sec_v, [c["truth_volume"] for c in cases], s["bland_altman_volume_secure_vs_truth"])
    )
    ba_rows = [
        [
            t,
            _fmt(ba["bias"], ".4g"),
            _fmt(ba["sd"], ".4g"),
            f"[{_fmt(ba['loa_low'], '.4g')}, {_fmt(ba['loa_high'], '.4g')}]",
        ]
        for t, _, _, ba in pairs
    ]
    parts += [
        f"<h2>Lesion volume: Bland-Altman ({html.escape(unit_v)})</h2>",
        _table(["pair", "bias", "SD", "95% limits of agreement"], ba_rows),
        bland_altman_plot(pairs, unit_v.split(" ")[0]),
    ]
    worst = sorted(scored, key=lambda c: c.engines["secure"]["dice"])[:3]
    parts.append("<h2>The three worst cases (secure Dice against the labels)</h2>")
    parts += [overlay_plot(c.name, c.overlay, c.engines["secure"]["dice"]) for c in worst if c.overlay is not None]
    head = ["case", f"truth vol. ({unit_v.split(' ')[0]})"]
    for e in ("secure", "float", "fixed"):
        if e in s:
            head += [f"{e} Dice", f"{e} IoU", f"{e} HD95", f"{e} vol."]
    if plain:
        head += ["secure≠fixed px", "agree vs float"]
    rows = []
    for c in cases:
        r = [html.escape(c["case"]), _fmt(c["truth_volume"], ".4g")]
        for e in ("secure", "float", "fixed"):
            if e in s:
                r += [_fmt(c[e]["dice"]), _fmt(c[e]["iou"]), _fmt(c[e]["hd95"], ".2f"), _fmt(c[e]["volume"], ".4g")]
        if plain:
            r += [str(c["secure_vs_fixed_pixels_differ"]), _fmt(c["secure_float_pixel_agreement"], ".4f")]
        rows.append(r)
    parts += ["<h2>Every case</h2>", _table(head, rows)]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>BUNET validation — {html.escape(m['name'])}"
        f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write(report: dict, scored: list[Any], path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(".part-" + path.name)
    tmp.write_text(render(report, scored), encoding="utf-8")
    tmp.replace(path)
