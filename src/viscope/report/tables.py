"""Tables and heatmaps for train x eval matrices (invariance, accuracy).

A table is a pandas DataFrame whose index is the training family and whose columns are
the evaluation families (plus ``average``); an optional second frame of the same shape
holds standard deviations over seeds, printed as ``mean ± std``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from viscope.io import atomic_write, atomic_write_text

#: short column labels as in the published table
SHORT = {
    "brightness": "bright", "contrast": "contrast", "grayscale": "gray", "invert": "invert",
    "posterize": "poster", "solarize": "solar", "scale": "scale", "perspective": "project",
    "rotation": "rotate", "translation": "translate", "identity": "identity",
    "average": "avg", "clean": "clean",
}
#: row labels as in the published table, with viscope's family name where it differs (the
#: name the CLI, the CSVs and the configs use)
ROW = {"invert": "color inversion (invert)", "perspective": "projection (perspective)",
       "posterize": "posterization (posterize)", "solarize": "solarization (solarize)"}


def _cell(m: float, s: float | None, digits: int) -> str:
    if not np.isfinite(m):
        return "—"
    if s is None or not np.isfinite(s):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def formatted(mean: pd.DataFrame, std: pd.DataFrame | None = None, digits: int = 2
              ) -> pd.DataFrame:
    """``mean`` (and ``std``) as strings, ``mean ± std`` where a std exists."""
    out = mean.copy().astype(object)
    for r in mean.index:
        for c in mean.columns:
            s = None if std is None else std.loc[r, c]
            out.loc[r, c] = _cell(float(mean.loc[r, c]), s, digits)
    return out


def to_markdown(mean: pd.DataFrame, std: pd.DataFrame | None = None, digits: int = 2,
                corner: str = "train \\ eval") -> str:
    """A GitHub-flavoured Markdown table."""
    f = formatted(mean, std, digits)
    cols = [SHORT.get(c, c) for c in f.columns]
    lines = ["| " + " | ".join([corner, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in f.index:
        lines.append("| " + " | ".join([ROW.get(r, r), *map(str, f.loc[r])]) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _tex(text: str) -> str:
    """Plain text (names, titles) escaped for LaTeX: ``test_vit`` -> ``test\\_vit``."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(mean: pd.DataFrame, std: pd.DataFrame | None = None, digits: int = 2,
             caption: str = "", corner: str = "train \\textbackslash{} eval") -> str:
    """A LaTeX ``tabular`` (booktabs) with ``$\\pm$`` for standard deviations.

    Row and column names and ``caption`` are plain text (escaped); ``corner`` is LaTeX.
    """
    f = formatted(mean, std, digits).map(lambda s: str(s).replace("±", "$\\pm$"))
    cols = [_tex(SHORT.get(c, c)) for c in f.columns]
    body = [" & ".join([_tex(ROW.get(r, r)), *f.loc[r]]) + r" \\" for r in f.index]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * len(cols) + "}", r"\toprule",
             " & ".join([corner, *cols]) + r" \\", r"\midrule", *body, r"\bottomrule",
             r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _tex(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def heatmap(mean: pd.DataFrame, path: str | Path, *, title: str, colorbar: str,
            std: pd.DataFrame | None = None, lower_is_better: bool = True,
            digits: int = 2, cmap: str = "viridis_r") -> Path:
    """Draw ``mean`` as a labelled heatmap with values in the cells and a colour bar.

    In each column the best cell (lowest if ``lower_is_better``) at the precision shown
    is outlined (tied cells all; none where every row ties), so the reader sees at a
    glance which training family is most invariant to each evaluation.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    values = mean.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * n_cols, 1.2 + 0.5 * n_rows),
                           layout="constrained")
    finite = values[np.isfinite(values)]
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0, 1)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap if lower_is_better else "viridis",
                   vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_cols), [SHORT.get(c, c) for c in mean.columns], rotation=35,
                  ha="right")
    ax.set_yticks(range(n_rows), [ROW.get(r, r) for r in mean.index])
    ax.set_xlabel("transformation in evaluation\n(red box: best row in each column; ties all "
                  "boxed, none where every row ties)")
    ax.set_ylabel("transformation in training")
    ax.set_title(title)
    norm = im.norm
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            s = None if std is None else float(std.iloc[i, j])
            text = _cell(v, s, digits).replace(" ± ", "\n±")
            shade = norm(v) if np.isfinite(v) else 0.5
            dark = shade > 0.55 if lower_is_better else shade < 0.45
            ax.text(j, i, text, ha="center", va="center", fontsize=7 if std is not None else 8,
                    color="white" if dark else "black")
    for j in range(n_cols):
        # best at the precision shown: tied rows are all boxed, and a column where every
        # row ties (e.g. grayscale on grey images) has no box
        col = np.where(np.isfinite(values[:, j]), np.round(values[:, j], digits), np.nan)
        if not np.isfinite(col).any():
            continue
        best = np.nanmin(col) if lower_is_better else np.nanmax(col)
        ties = np.flatnonzero(col == best)
        if len(ties) == np.isfinite(col).sum() and len(ties) > 1:
            continue
        for i in ties:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.2,
                                   edgecolor="red"))
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label(colorbar)
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=130, format=path.suffix.lstrip(".")))
    plt.close(fig)
    return path


def write_table_set(mean: pd.DataFrame, std: pd.DataFrame | None, folder: str | Path,
                    stem: str, *, title: str, colorbar: str, lower_is_better: bool = True,
                    digits: int = 2) -> dict[str, Path]:
    """Write ``stem.csv`` (means, and ``stem_std.csv``), ``.md``, ``.tex`` and ``.png``."""
    folder = Path(folder)
    out = {"csv": atomic_write_text(folder / f"{stem}.csv",
                                    mean.to_csv(index_label="train", float_format="%.6g"))}
    if std is not None:
        out["std"] = atomic_write_text(folder / f"{stem}_std.csv",
                                       std.to_csv(index_label="train", float_format="%.6g"))
    out["md"] = atomic_write_text(folder / f"{stem}.md", f"**{title}**\n\n"
                                  + to_markdown(mean, std, digits))
    out["tex"] = atomic_write_text(folder / f"{stem}.tex",
                                   to_latex(mean, std, digits, caption=title))
    out["png"] = heatmap(mean, folder / f"{stem}.png", title=title, colorbar=colorbar, std=std,
                         lower_is_better=lower_is_better, digits=digits)
    return out
