"""``leukoedge report``: one self-contained HTML page over a predictions file.

What a person would rather look at than read: the headline figures with their 95%
patient-bootstrap intervals, probability histograms per class, the ROC curve with the
operating point, the reliability diagram (before and after calibration when the rows carry
logits and the spec a temperature), the confusion matrix, the per-patient table with the
call (leukoedge.patient), and thumbnail montages of the most confident ALL, the most confident HEM, the most
uncertain and the misclassified cells (with their heatmaps when the rows name them).
Without labels it shows what needs none.

Self-contained: the figures (matplotlib, the ``report`` extra) and thumbnails are PNG/JPEG
``data:`` URIs, there is no script, and a Content-Security-Policy forbids every load that
is not ``data:``, so opening the file makes no request. Every figure shown is also written
machine-readably (``data-metric`` = its path in ``evaluate --json``'s report, ``data-value``
= the exact number), and it is the same report: both come from
:func:`leukoedge.evaluate.report_of`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ImageError, MissingExtraError
from .evaluate import CalibrationMetrics, FileReport, Interval, Metrics, Report, Scores
from .predictions import PredictionSet
from .spec import ModelSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .drift import DriftSummary

REPORT_EXTRA_HINT = "pip install 'leukoedge[report]'"
THUMB = 96
MONTAGE = 12
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
ALL_COLOUR, HEM_COLOUR = "#c0392b", "#2471a3"


def _figure(width: float = 5.0, height: float = 3.6) -> Figure:
    """A new matplotlib figure (Agg, never a window); MissingExtraError without it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError("'leukoedge report' needs matplotlib, which is not installed",
                                REPORT_EXTRA_HINT) from exc
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def require_matplotlib() -> None:
    _figure()


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(path: str, value: float | int | None, digits: int = 4) -> str:
    """A figure as a person reads it, with its exact value for machines."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<span data-metric="{_esc(path)}" data-value="null">-</span>'
    text = str(value) if isinstance(value, int) else f"{value:.{digits}f}"
    return (f'<span data-metric="{_esc(path)}" data-value="{_esc(repr(value))}">'
            f"{text}</span>")


# -- figures ------------------------------------------------------------------------------

def histogram_figure(probs: np.ndarray, truth: Sequence[int | None], threshold: float) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 31).tolist()
    t = np.array([-1 if v is None else v for v in truth])
    if (t >= 0).any():
        for cls, name, colour in ((1, "ALL", ALL_COLOUR), (0, "HEM", HEM_COLOUR)):
            sel = probs[t == cls]
            ax.hist(sel, bins=bins, histtype="stepfilled", alpha=0.45, color=colour,
                    label=f"{name} ({len(sel)})")
        if (t < 0).any():
            ax.hist(probs[t < 0], bins=bins, histtype="step", color="grey",
                    label=f"unlabelled ({int((t < 0).sum())})")
    else:
        ax.hist(probs, bins=bins, color="grey", label=f"cells ({len(probs)})")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1,
               label=f"threshold {threshold:.3f}")
    ax.set_xlabel("P(ALL)")
    ax.set_ylabel("cells")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return _png(fig)


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score (highest first), from (0, 0)."""
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    return (np.r_[0.0, fp / max(1, int((y == 0).sum()))],
            np.r_[0.0, tp / max(1, int((y == 1).sum()))])


def roc_figure(y: np.ndarray, score: np.ndarray, auc: float | None,
               sens: float, spec: float) -> str:
    fig = _figure(4.4, 4.0)
    ax = fig.add_subplot()
    fpr, tpr = roc_points(y, score)
    ax.plot(fpr, tpr, color=ALL_COLOUR, label=f"ROC (AUC {auc:.3f})" if auc is not None
            else "ROC")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.plot([1 - spec], [sens], "o", color="black", markersize=7,
            label=f"operating point\nsens {sens:.3f}, spec {spec:.3f}")
    ax.set_xlabel("1 - specificity (HEM called ALL)")
    ax.set_ylabel("sensitivity (ALL found)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def reliability_figure(cal: CalibrationMetrics, temperature: float) -> str:
    fig = _figure(4.4, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
    curves = []
    if cal.uncalibrated is not None:
        curves.append((cal.uncalibrated, "temperature 1 (before)", "#7f8c8d", "s"))
        curves.append((cal, f"temperature {temperature:.3f} (after)", ALL_COLOUR, "o"))
    else:
        curves.append((cal, f"temperature {temperature:.3f}", ALL_COLOUR, "o"))
    for c, label, colour, marker in curves:
        rel = c.reliability
        xs = [m for m, n in zip(rel.mean_prob, rel.count) if n and m is not None]
        ys = [f for f, n in zip(rel.frac_all, rel.count) if n and f is not None]
        ax.plot(xs, ys, marker=marker, color=colour, label=f"{label}, ECE {c.ece:.3f}")
    ax.set_xlabel(f"mean P(ALL) in the bin ({cal.bins} equal-width bins)")
    ax.set_ylabel("fraction of cells that are ALL")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


# -- thumbnails ---------------------------------------------------------------------------

def _heatmap_array(path: Path) -> np.ndarray | None:
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            from .preprocess import open_image

            with open_image(path) as img:
                a = np.asarray(img.convert("L"), dtype=np.float64)
    except (OSError, ValueError, ImageError):
        return None
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or not a.size or not np.all(np.isfinite(a)):
        return None
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def thumbnail(path: Path, heatmap: Path | None = None, size: int = THUMB) -> str | None:
    """A JPEG data URI of the cell (with its heatmap blended in), or None if unreadable."""
    from PIL import Image

    from .preprocess import preprocess

    try:
        arr = preprocess(path, size, 1.0, "bilinear")
    except ImageError:
        return None
    if heatmap is not None:
        h = _heatmap_array(heatmap)
        if h is not None:
            from matplotlib import colormaps

            hm = Image.fromarray((h * 255).astype(np.uint8)).resize((size, size))
            rgb = colormaps["jet"](np.asarray(hm, dtype=np.float64) / 255.0)[..., :3]
            arr = (0.6 * arr + 0.4 * rgb * 255).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _montage(ps: PredictionSet, idx: Sequence[int], probs: np.ndarray, key: str, title: str,
             note: str, images_root: Path | None) -> str:
    cells = []
    for i in idx:
        hm = ps.heatmaps[i]
        hpath = None
        if hm:
            hpath = Path(hm) if os.path.isabs(hm) else (
                images_root if images_root is not None else ps.source.parent) / hm
        uri = thumbnail(ps.file_path(i, images_root), hpath)
        name = os.path.basename(ps.paths[i])
        truth = ps.truth[i]
        tl = "" if truth is None else f" · truth {'ALL' if truth == 1 else 'HEM'}"
        img = (f'<img src="{uri}" width="{THUMB}" height="{THUMB}" alt="{_esc(name)}">'
               if uri else f'<div class="missing" title="{_esc(ps.paths[i])}">image not '
               "found</div>")
        cells.append(f'<figure data-path="{_esc(ps.paths[i])}">{img}<figcaption>'
                     f"{_esc(name)}<br>P(ALL) {probs[i]:.3f}{tl}</figcaption></figure>")
    body = "".join(cells) or "<p class=dim>none</p>"
    return (f'<section class="montage" id="montage-{key}" data-count="{len(idx)}">'
            f"<h3>{_esc(title)}</h3><p class=dim>{_esc(note)}</p>"
            f'<div class="grid">{body}</div></section>')


# -- the page -----------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cfd8e3;font-size:13px}
main{padding:16px 24px;max-width:1280px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 16px;
margin:0 0 16px}
h2{font-size:16px;margin:0 0 8px}h3{font-size:14px;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px;min-width:150px}
.card .k{color:#666;font-size:12px}.card .v{font-size:22px;font-weight:600}
.card .ci{color:#666;font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs figure{margin:0}.figs figcaption{color:#666;font-size:12px;max-width:440px}
table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.grid figure{margin:0;width:110px;font-size:11px;color:#444;overflow-wrap:anywhere}
.grid img{display:block;border-radius:4px}
.missing{width:96px;height:96px;background:#eee;color:#888;font-size:11px;display:flex;
align-items:center;justify-content:center}
.dim{color:#777;font-size:12px}.warn{color:#a04000;font-weight:600}
.all{color:#c0392b}.hem{color:#2471a3}
"""


def _card(label: str, path: str, value: float | None, iv: Interval | None,
          ivpath: str) -> str:
    ci = ""
    if iv is not None:
        ci = (f'<div class="ci">95% CI {_num(ivpath + ".low", iv.low, 3)}'
              f' – {_num(ivpath + ".high", iv.high, 3)}</div>')
    return (f'<div class="card"><div class="k">{_esc(label)}</div>'
            f'<div class="v">{_num(path, value, 3)}</div>{ci}</div>')


def write_report(path: Path, got: FileReport, *, title: str = "leukoedge report",
                 images_root: Path | None = None, per_montage: int = MONTAGE) -> int:
    """Render the page of a predictions file's report and write it atomically; returns its
    length in characters."""
    from .output import atomic_write_text

    page = render(got.rows, got.spec, got.report, title=title, images_root=images_root,
                  per_montage=per_montage)
    atomic_write_text(path, page)
    return len(page)


def render(ps: PredictionSet, spec: ModelSpec, rep: Report, *, title: str = "leukoedge report",
           images_root: Path | None = None, per_montage: int = MONTAGE) -> str:
    """The HTML page of ``rep`` (built from ``ps`` with ``spec`` by ``report_of``)."""
    require_matplotlib()
    scores = ps.scores(spec)
    pred = scores.predicted(spec)
    parts = [_header(ps, rep, title)]
    parts += [f'<section><p class="warn" data-warning>warning: {_esc(w)}</p></section>'
              for w in rep["warnings"]]
    parts.append(_headline(rep, pred))
    parts.append(_pictures(ps, spec, rep, scores.probs))
    if rep["metrics"] is not None:
        parts.append(_confusion(rep["metrics"]))
    parts.append(_patients(rep))
    drift = rep.get("drift")
    if drift is not None:
        parts.append(_drift(drift))
    parts.append(_cells(ps, spec, scores, pred, images_root, per_montage))
    parts.append('<p class="dim">leukoedge report · self-contained: nothing on this page '
                 "is loaded from anywhere else.</p></main>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
            + "".join(parts) + "</body></html>\n")


def _header(ps: PredictionSet, rep: Report, title: str) -> str:
    """The title bar (file, model, counts, threshold, temperature); opens ``<main>``."""
    sub = (f"{_esc(ps.source.name)} · model {_esc(rep['model'])} · {len(ps.paths)} cells"
           f" · {rep['errors']} error rows · threshold P(ALL) ≥ "
           f"{_num('threshold', rep['threshold'])} · temperature "
           f"{_num('temperature', rep['temperature'])}")
    return f"<header><h1>{_esc(title)}</h1><p>{sub}</p></header><main>"


def _headline(rep: Report, pred: np.ndarray) -> str:
    """The cards of the headline figures (with their intervals) and how they were got."""
    mt, cal, iv = rep["metrics"], rep["calibration"], rep["intervals"]
    cards = []
    if mt is not None:
        for k, label, value in (("weighted_f1", "weighted F1", mt.weighted_f1),
                                ("sensitivity_all", "sensitivity", mt.sensitivity_all),
                                ("specificity_all", "specificity", mt.specificity_all),
                                ("roc_auc", "ROC AUC", mt.roc_auc)):
            cards.append(_card(label, f"metrics.{k}", value,
                               None if iv is None else iv.of(k), f"intervals.{k}"))
        cards.append(_card("accuracy", "metrics.accuracy", mt.accuracy, None, ""))
    if cal is not None:
        cards.append(_card("ECE (15 bins)", "calibration.ece", cal.ece, None, ""))
        cards.append(_card("Brier score", "calibration.brier", cal.brier, None, ""))
        cards.append(_card("log-loss", "calibration.log_loss", cal.log_loss, None, ""))
    n_all = int(pred.sum())
    cards.append(f'<div class="card"><div class="k">cells called ALL / HEM</div>'
                 f'<div class="v"><span class="all">{n_all}</span> / <span class="hem">'
                 f"{len(pred) - n_all}</span></div></div>")
    parts = [f'<section id="headline"><h2>Figures</h2><div class="cards">{"".join(cards)}'
             "</div>"]
    if iv is not None:
        parts.append(f'<p class="dim" id="interval-method">95% intervals: {_esc(iv.method)}; '
                     f'{_num("intervals.resamples", iv.resamples)} resamples, seed '
                     f'{_num("intervals.seed", iv.seed)}, '
                     f'{iv.patients_all} ALL and {iv.patients_hem} HEM patients.</p>')
    if mt is None:
        parts.append('<p class="dim">No labels: only what needs none is shown (give '
                     "--labels, or rows whose paths lie in all/ and hem/).</p>")
    parts.append("</section>")
    return "".join(parts)


def _pictures(ps: PredictionSet, spec: ModelSpec, rep: Report, probs: np.ndarray) -> str:
    """The histogram, and with labels the ROC curve and the reliability diagram."""
    mt, cal, truth = rep["metrics"], rep["calibration"], ps.truth
    figs = [("fig-histogram", histogram_figure(probs, truth, spec.threshold),
             "P(ALL) per class, with the decision threshold.")]
    if mt is not None and mt.roc_auc is not None:
        labelled = [i for i, t in enumerate(truth) if t is not None]
        y = np.array([truth[i] for i in labelled], dtype=np.int64)
        figs.append(("fig-roc", roc_figure(y, probs[labelled], mt.roc_auc,
                                           mt.sensitivity_all, mt.specificity_all),
                     "ROC curve; the dot is the model's threshold."))
    if cal is not None:
        figs.append(("fig-reliability", reliability_figure(cal, rep["temperature"]),
                     "Reliability: per bin of P(ALL), the fraction of cells that are ALL. "
                     "On the diagonal, P(ALL) can be read as a frequency."))
    body = "".join(f'<figure id="{fid}"><img src="{uri}" alt="{fid}">'
                   f"<figcaption>{_esc(cap)}</figcaption></figure>" for fid, uri, cap in figs)
    return f'<section id="figures"><h2>Pictures</h2><div class="figs">{body}</div></section>'


def _confusion(mt: Metrics) -> str:
    m = mt.confusion.matrix
    rows = "".join(
        f"<tr><th>{name}</th><td>{_num(f'metrics.confusion.matrix.{r}.0', m[r][0])}</td>"
        f"<td>{_num(f'metrics.confusion.matrix.{r}.1', m[r][1])}</td></tr>"
        for r, name in ((0, "true HEM"), (1, "true ALL")))
    return ('<section id="confusion"><h2>Confusion matrix</h2><table><tr><th></th>'
            f"<th>called HEM</th><th>called ALL</th></tr>{rows}</table></section>")


def _patients(rep: Report) -> str:
    """The per-patient summary (leukoedge.patient: the same rows as classify
    --patients-out, evaluate and serve) with each patient's truth, and the figures over
    patients."""
    truth = {r["patient"]: r["true_label"] for r in rep["patients"]}
    prow = []
    for j, r in enumerate(rep["patient_calls"]):
        base = f"patient_calls.{j}"
        share = (f"{_num(base + '.share_all', r['share_all'], 3)} "
                 f"({_num(base + '.share_all_low', r['share_all_low'], 2)}–"
                 f"{_num(base + '.share_all_high', r['share_all_high'], 2)})")
        t = truth.get(r["patient"])
        prow.append(
            f'<tr data-patient="{_esc(r["patient"])}" data-call="{_esc(r["call"])}">'
            f"<td>{_esc(r['patient'])}</td><td>{_esc(t.upper() if t else '-')}</td>"
            f"<td>{_num(base + '.cells', r['cells'])}</td>"
            f"<td>{_num(base + '.errors', r['errors'])}</td>"
            f"<td>{_num(base + '.called_all', r['called_all'])}</td><td>{share}</td>"
            f"<td>{_num(base + '.mean_prob_all', r['mean_prob_all'], 3)}</td>"
            f"<td>{_num(base + '.drift', r['drift'], 2)}</td>"
            f"<td class=\"{_esc(r['call'].lower())}\">{_esc(r['call'])}</td>"
            f"<td>{_esc(r['reason'])}</td></tr>")
    pm = rep["patient_metrics"]
    figs = ""
    if pm is not None:
        figs = (f"<p>Over the {_num('patient_metrics.patients', pm.patients)} patients with "
                f"a truth: {_num('patient_metrics.called', pm.called)} called, accuracy "
                f"among called {_num('patient_metrics.accuracy_called', pm.accuracy_called, 3)}"
                f", sensitivity {_num('patient_metrics.sensitivity', pm.sensitivity, 3)}, "
                f"specificity {_num('patient_metrics.specificity', pm.specificity, 3)}, no "
                f"call {_num('patient_metrics.no_call_share', pm.no_call_share, 3)} (a "
                "patient with no call counts as not found).</p>")
    from .patient import parse

    rule = parse(rep["patient_rule"]["rule"])
    return ('<section id="patients"><h2>Per patient</h2><table><tr><th>patient</th>'
            "<th>truth</th><th>cells</th><th>errors</th><th>called ALL</th>"
            "<th>share ALL (95% Wilson)</th><th>mean P(ALL)</th><th>median drift</th>"
            f"<th>call</th><th>reason</th></tr>{''.join(prow)}</table>{figs}"
            f'<p class="dim">Patient rule: {_esc(rule.describe())} (docs/usage.md, '
            '"Patients").</p></section>')


def _drift(drift: DriftSummary) -> str:
    """Per patient, how far the cells lie from the training cells."""
    drow = "".join(
        f'<tr data-patient="{_esc(r.patient)}"><td>{_esc(r.patient)}</td>'
        f"<td>{_num(f'drift.patients.{j}.cells', r.cells)}</td>"
        f"<td>{_num(f'drift.patients.{j}.median', r.median, 2)}</td>"
        f"<td>{_num(f'drift.patients.{j}.share_above', r.share_above, 2)}</td>"
        f"<td>{'flagged' if r.flagged else 'no (' + _esc(r.note) + ')' if r.note else 'no'}</td></tr>"
        for j, r in enumerate(drift.patients))
    flag = ("no patient is flagged: the model that made these rows is unknown" if
            drift.flag is None else "a patient is flagged when its median is above "
            f"{_num('drift.flag', drift.flag, 3)}")
    return ('<section id="drift"><h2>Drift: do these cells look like the training cells?</h2>'
            f"<p>{_esc(drift.line)}</p><p class=\"dim\">Score 1.0 = the 95th percentile "
            f"of the training cells' own scores; {flag} (docs/usage.md).</p>"
            "<table><tr><th>patient</th><th>cells</th><th>median score</th>"
            f"<th>share above 1.0</th><th>flagged</th></tr>{drow}</table></section>")


def _cells(ps: PredictionSet, spec: ModelSpec, scores: Scores, pred: np.ndarray,
           images_root: Path | None, nk: int) -> str:
    """The thumbnail montages: most confident ALL and HEM, most uncertain, misclassified
    (with labels), ``nk`` cells each."""
    probs, truth = scores.probs, ps.truth
    order = np.argsort(-probs, kind="mergesort")
    dist = (np.abs(scores.logits - spec.logit_threshold) if scores.has_logits
            else np.abs(probs - spec.threshold))
    mont = [
        _montage(ps, [int(i) for i in order if pred[i] == 1][:nk], probs, "all",
                 "Most confident ALL", "highest P(ALL)", images_root),
        _montage(ps, [int(i) for i in order[::-1] if pred[i] == 0][:nk], probs, "hem",
                 "Most confident HEM", "lowest P(ALL)", images_root),
        _montage(ps, [int(i) for i in np.argsort(dist, kind="mergesort")[:nk]], probs,
                 "uncertain", "Most uncertain", "closest to the threshold", images_root),
    ]
    labelled = [i for i, t in enumerate(truth) if t is not None]
    if labelled:
        wrong = [i for i in labelled if pred[i] != truth[i]]
        wrong.sort(key=lambda i: -float(dist[i]))
        mont.append(_montage(ps, wrong[:nk], probs, "misclassified",
                             f"Misclassified ({len(wrong)})", "the most confidently wrong "
                             "first", images_root))
    return '<section id="cells"><h2>Cells</h2>' + "".join(mont) + "</section>"
