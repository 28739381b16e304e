"""A run's pictures, which regsweep.tracking logs to the run: its learning curve and its
validation confusion matrix, with class names in a font that draws them. (The report's own
plots are regsweep.report's.) matplotlib's object API: no pyplot state, no backend switch."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def learning_curve_figure(history: dict[str, list[float]], phase2_start: int | None):
    figure = Figure(figsize=(10, 4))  # matplotlib's object API: no pyplot state, no backend switch
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.plot(epochs, history[metric], label="train (running, augmented, dropout on)")
        axis.plot(epochs, history[f"val_{metric}"], label="validation")
        if phase2_start is not None:
            axis.axvline(phase2_start + 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
    accuracy_axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


_FONT_CHARACTERS: dict[str, set[int]] = {}  # font file → the code points it has glyphs for


def _class_labels(class_names, width_inches: float) -> tuple[list[str], dict, str]:
    """Tick labels, their text properties and the x-axis label, so that no class name draws a
    missing glyph (a box, and a warning per character): the names in the default font when it
    has every character, else in an installed font that has them all, else the class indices,
    with the x-axis label mapping each to its name (characters no font draws as \\u escapes)."""
    import textwrap

    from matplotlib import font_manager

    def characters(fname: str) -> set[int]:
        if fname not in _FONT_CHARACTERS:
            _FONT_CHARACTERS[fname] = set(font_manager.get_font(fname).get_charmap())
        return _FONT_CHARACTERS[fname]

    plain = {"parse_math": False}  # a "$" in a folder name is not mathtext
    needed = {ord(c) for name in class_names for c in name if not c.isspace()}
    drawn = characters(str(font_manager.findfont(font_manager.FontProperties())))
    if needed <= drawn:
        return list(class_names), plain, "predicted"
    regular_first = sorted(
        font_manager.fontManager.ttflist,
        key=lambda entry: (entry.style != "normal", str(entry.weight) not in ("400", "normal")),
    )
    for entry in regular_first:
        if not entry.name.startswith("Last Resort") and needed <= characters(entry.fname):  # Last Resort: boxes
            font = font_manager.FontProperties(fname=entry.fname)
            return list(class_names), {**plain, "fontproperties": font}, "predicted"
    mapping = ", ".join(
        f"{index} = " + "".join(c if ord(c) in drawn or c.isspace() else f"\\u{ord(c):04x}" for c in name)
        for index, name in enumerate(class_names)
    )
    caption = textwrap.fill(
        f"classes by index (no installed font draws their names): {mapping}", int(10 * width_inches)
    )  # about 10 characters an inch fit
    return [str(index) for index in range(len(class_names))], plain, f"predicted\n{caption}"


def confusion_figure(confusion: np.ndarray, class_names):
    width = 1.2 + 0.6 * len(class_names)
    figure = Figure(figsize=(width, width))
    axis = figure.subplots()
    axis.imshow(confusion, cmap="Blues")
    ticks = np.arange(len(class_names))
    labels, label_font, xlabel = _class_labels(class_names, width)
    axis.set_xticks(ticks, labels, rotation=45, ha="right", **label_font)
    axis.set_yticks(ticks, labels, **label_font)
    for (row, col), count in np.ndenumerate(confusion):
        axis.text(
            col, row, int(count), ha="center", va="center", color="white" if count > confusion.max() / 2 else "black"
        )
    axis.set_xlabel(xlabel, parse_math=False)
    axis.set_ylabel("true")
    axis.set_title("validation confusion matrix")
    figure.tight_layout()
    return figure
