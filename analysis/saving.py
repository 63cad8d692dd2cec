"""Writing figures to files, atomically: ``save_figure`` (each format laid out by its
own renderer) and ``save_figure_once`` (one layout for every format, and the PNG bytes
for a page: what the report uses).

A file is written to a temporary name beside its target and renamed, so a reader never
sees half a PDF and an interrupted run never leaves one behind. Saving closes the
figure; nothing here imports pyplot.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib as mpl

from ablations.files import atomic_write
from analysis.style import PAPER_RC


def _write_atomic(target: Path, write) -> str:
    """``write(binary file)`` into ``target`` through ``ablations.files.atomic_write``: a
    reader never sees half a PDF and an interrupted run never leaves one behind."""
    def to_file(tmp):
        with open(tmp, "wb") as fh:
            write(fh)
    return atomic_write(target, to_file)


def _close(fig) -> None:
    # Only figures made through pyplot are registered there; importing
    # pyplot just to close would pick a GUI backend as a side effect.
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def save_figure(fig, path_without_suffix, formats=("pdf", "png")) -> list[str]:
    """Write ``fig`` as ``<path>.<fmt>`` for each format, atomically; close it; return paths.

    Each format is laid out and cropped by its own renderer (matplotlib's
    ``savefig``); ``save_figure_once`` lays out once for all of them.
    """
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        # pdf.fonttype is read at save time, not at figure creation.
        with mpl.rc_context(PAPER_RC):
            for fmt in formats:
                written.append(_write_atomic(base.with_name(f"{base.name}.{fmt}"),
                                             lambda fh, fmt=fmt: fig.savefig(fh, format=fmt)))
    finally:
        _close(fig)
    return written


def save_figure_once(fig, path_without_suffix, formats=("pdf", "png"), preview_dpi=150
                     ) -> tuple[list[str], bytes]:
    """``save_figure`` with one layout for every format; also return PNG bytes for a page.

    ``savefig`` with ``bbox_inches="tight"`` and a constrained layout lays the
    figure out, draws it once to measure it, crops and draws it again: for
    every format. Here the PNG (at ``savefig.dpi``, or in memory at
    ``preview_dpi`` when PNG is not among ``formats``) is saved exactly so,
    its crop box is kept, and every other format is drawn once with that
    layout and that box: about a third less time per figure. The PNG is the
    figure's first rendering, so where a first draw settles differently from
    a second (rotated tick labels that grow their ticks), it may differ from
    ``save_figure``'s by a pixel of layout; the PDF's layout comes from the
    PNG's text metrics instead of its own (sub-point differences).
    """
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    kept = {}
    measure = fig.get_tightbbox

    def keep_box(*args, **kwargs):  # savefig's own crop box, as it computes it
        kept["box"] = box = measure(*args, **kwargs)
        return box

    paths = {}
    try:
        with mpl.rc_context(PAPER_RC):
            buf = io.BytesIO()
            fig.get_tightbbox = keep_box  # an instance attribute: this figure only
            try:
                fig.savefig(buf, format="png",
                            **({} if "png" in formats else {"dpi": preview_dpi}))
            finally:
                del fig.get_tightbbox
            png = buf.getvalue()
            rest = {}
            if "box" in kept and mpl.rcParams["savefig.bbox"] == "tight":
                fig.set_layout_engine(None)  # laid out above: keep those positions
                rest = {"bbox_inches": kept["box"].padded(mpl.rcParams["savefig.pad_inches"])}
            for fmt in formats:
                target = base.with_name(f"{base.name}.{fmt}")
                paths[fmt] = _write_atomic(target, (lambda fh: fh.write(png)) if fmt == "png"
                                           else lambda fh, fmt=fmt: fig.savefig(fh, format=fmt,
                                                                                **rest))
    finally:
        _close(fig)
    return [paths[f] for f in formats], png
