"""Sanity figure for the heatmaps on real cells (docs/heatmaps.md), runtime only (no torch).

For every cell given (e.g. the held-out patients of a fold, with that fold's model exported
with ``--cam``): the map is upsampled onto the model's input (what the network saw) with
:func:`leukoedge.heatmap.upsample`, and compared with the cell's pixels (R+G+B above
``CELL_LEVEL``: the background of C-NMC cells is black):

- ``area``: the share of the input the cell covers;
- ``positive on cell``: the share of the map's positive mass (sum of max(map, 0)) that lies
  on the cell. A map that ignored where the cell is would put about ``area`` there.

Prints the medians and the share of cells whose positive mass on the cell exceeds their
area, writes them as JSON, and draws a montage (ALL and HEM cells, image and overlay) with
Pillow. Usage::

    nice -n 10 python scripts/cam_figure.py MODEL.onnx CELLS... \\
        [--folds docs/cv/folds.csv --fold 0] --montage docs/img/cam-montage.png \\
        --json docs/cv/cam-sanity.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from leukoedge.data import collect
from leukoedge.heatmap import render, upsample
from leukoedge.preprocess import CELL_LEVEL, preprocess_for
from leukoedge.session import SessionConfig, load_model

THUMB = 160


def shares(x: np.ndarray, cam: np.ndarray) -> tuple[float, float]:
    """(area the cell covers, share of the map's positive mass on the cell) of one input."""
    s = x.shape[0]
    m = upsample(cam, s, s, 1.0)
    cell = x.astype(np.int32).sum(axis=2) > CELL_LEVEL
    pos = np.maximum(m, 0.0)
    total = float(pos.sum())
    return float(cell.mean()), (float(pos[cell].sum()) / total if total > 0 else float("nan"))


def montage(picks: list[tuple[Any, float, np.ndarray]], crop: float, path: Path) -> None:
    cols = 4
    rows = -(-len(picks) // cols)
    cell_w = 2 * THUMB
    sheet = Image.new("RGB", (cols * cell_w, rows * (THUMB + 18)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (item, prob, cam) in enumerate(picks):
        r, c = divmod(i, cols)
        x0, y0 = c * cell_w, r * (THUMB + 18)
        with Image.open(item.path) as im:
            orig = im.convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        over = render(item.path, cam, crop).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        sheet.paste(orig, (x0, y0))
        sheet.paste(over, (x0 + THUMB, y0))
        draw.text((x0 + 4, y0 + THUMB + 2),
                  f"{item.label_name.upper()}  P(ALL) {prob:.2f}  {item.path.name[:18]}",
                  fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--folds", type=Path)
    ap.add_argument("--fold", type=int)
    ap.add_argument("--montage", type=Path)
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    m = load_model(args.model, SessionConfig(provider="cpu"))
    items = [it for it in collect(args.data) if it.label is not None]
    if args.folds is not None and args.fold is not None:
        with open(args.folds, newline="") as fh:
            keep = {r["patient"] for r in csv.DictReader(fh) if int(r["fold"]) == args.fold}
        items = [it for it in items if it.patient in keep]
    area, on_cell, probs, maps = [], [], [], []
    for i in range(0, len(items), 64):
        chunk = items[i:i + 64]
        x = np.stack([preprocess_for(it.path, m.spec) for it in chunk])
        logits, _, cams = m.predict_all(x, cam=True)
        assert cams is not None
        for j in range(len(chunk)):
            a, p = shares(x[j], cams[j])
            area.append(a)
            on_cell.append(p)
        probs += m.spec.probability(logits).tolist()
        maps += list(cams)
    a_arr, p_arr = np.asarray(area), np.asarray(on_cell)
    ok = np.isfinite(p_arr)
    result = {
        "model": str(args.model), "cells": len(items), "with_positive_mass": int(ok.sum()),
        "median_area": float(np.median(a_arr)),
        "median_positive_on_cell": float(np.median(p_arr[ok])),
        "share_of_cells_positive_on_cell_above_area": float(np.mean(p_arr[ok] > a_arr[ok])),
        "mean_ratio_positive_on_cell_to_area": float(np.mean(p_arr[ok] / a_arr[ok])),
        "map_shape": list(maps[0].shape) if maps else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.montage:
        rng = np.random.default_rng(0)
        picks: list[tuple[Any, float, np.ndarray]] = []
        for label in (1, 0):
            idx = [i for i, it in enumerate(items) if it.label == label]
            for i in sorted(rng.choice(idx, min(args.per_class, len(idx)), replace=False)):
                picks.append((items[i], probs[i], maps[i]))
        montage(picks, m.spec.crop_fraction, args.montage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
