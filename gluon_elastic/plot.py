"""Draw metrics files of :mod:`gluon_elastic.metrics`: LR, world size, loss and throughput.

    python -m gluon_elastic.plot RUN.jsonl [RUN2.jsonl ...] -o run.png [--labels a b ...]

One figure, four rows (LR, world size, training loss on a log scale, samples per second) and two
columns (against seconds since the run's first record, and against iterations). Several files are
overlaid, one colour each. Events are vertical lines, one style per kind (world change, failure,
rollback, restart; Horovod resets too), in every panel of the run's colour. A rollback sends the
iteration count back: the curves break there instead of drawing a line back in time.

Imports no MXNet; needs matplotlib (drawn with the Agg backend, no display).
"""
import argparse
import os
import sys

from .metrics import read_records

__all__ = ["plot_runs", "main"]

PANELS = (("lr", "learning rate", False), ("world_size", "world size", False),
          ("loss", "training loss", True), ("samples_per_second", "samples / s", False))
# (colour, line style, legend label) per event; a run's own colour is not used for events so that
# they read the same in every run.
EVENT_STYLES = {
    "world_change": ("0.35", "--", "world change"),
    "failure": ("red", "-", "failure"),
    "rollback": ("darkorange", ":", "rollback"),
    "restart": ("purple", "-.", "restart"),
    "reset": ("0.7", (0, (1, 3)), "reset (Horovod)"),
}


def _segments(records):
    """Step records split into runs of uninterrupted training: lists of records.

    A curve breaks where the iteration goes back (a rollback) and where the process was not
    training (a reset, restart, failure or a new process start), so no line is drawn across
    the gap.
    """
    segments, current = [], []
    for record in records:
        interruption = record["kind"] == "start" or (
            record["kind"] == "event" and record["event"] != "world_change")
        if interruption or (record["kind"] == "step" and current
                            and record["iteration"] <= current[-1]["iteration"]):
            if current:
                segments.append(current)
            current = []
        if record["kind"] == "step":
            current.append(record)
    if current:
        segments.append(current)
    return segments


def _event_iteration(record):
    return record.get("iteration")


def plot_runs(paths, out, labels=None, title=None):
    """Draw the metrics files ``paths`` into the image file ``out``.

    Parameters
    ----------
    paths : list of str
        Metrics files (JSON lines).
    out : str
        Image path; the format follows its extension (``.png``, ``.svg``, ``.pdf``).
    labels : list of str, optional
        One legend label per file (default: the file names without extension).
    title : str, optional

    Returns
    -------
    dict
        ``{label: {"steps": n, "events": {kind: n}}}`` of what was drawn.

    Raises
    ------
    ValueError
        A file holds no step record, or ``labels`` does not match ``paths``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if len(labels) != len(paths):
        raise ValueError("%d labels for %d metrics files" % (len(labels), len(paths)))
    figure, axes = plt.subplots(len(PANELS), 2, figsize=(13, 11), sharex="col", squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn, event_kinds = {}, set()
    for number, (path, label) in enumerate(zip(paths, labels)):
        records = read_records(path)
        steps = [r for r in records if r["kind"] == "step"]
        if not steps:
            raise ValueError("%s holds no step record" % path)
        events = [r for r in records if r["kind"] == "event"]
        origin = min(r["time"] for r in records)
        colour = colours[number % len(colours)]
        for row, (key, _, log_scale) in enumerate(PANELS):
            for column in range(2):
                axis = axes[row][column]
                for index, segment in enumerate(_segments(records)):
                    values = [r[key] for r in segment]
                    if log_scale:
                        values = [v if v > 0 else float("nan") for v in values]
                    xs = [r["time"] - origin for r in segment] if column == 0 else \
                        [r["iteration"] for r in segment]
                    drawstyle = "steps-post" if key == "world_size" else "default"
                    axis.plot(xs, values, color=colour, linewidth=1.0, drawstyle=drawstyle,
                              label=label if (row, column, index) == (0, 0, 0) else None)
                for event in events:
                    colour_e, style, _ = EVENT_STYLES.get(event["event"], ("0.5", "--", ""))
                    x = event["time"] - origin if column == 0 else _event_iteration(event)
                    if x is None:
                        continue
                    axis.axvline(x, color=colour_e, linestyle=style, linewidth=0.9, alpha=0.8)
                    event_kinds.add(event["event"])
        counts = {}
        for event in events:
            counts[event["event"]] = counts.get(event["event"], 0) + 1
        drawn[label] = {"steps": len(steps), "events": counts}
    for row, (key, name, log_scale) in enumerate(PANELS):
        for column in range(2):
            axis = axes[row][column]
            if log_scale:
                axis.set_yscale("log")
            axis.grid(True, alpha=0.3)
            if column == 0:
                axis.set_ylabel(name)
    axes[-1][0].set_xlabel("seconds since start")
    axes[-1][1].set_xlabel("iteration")
    handles, names = axes[0][0].get_legend_handles_labels()
    from matplotlib.lines import Line2D
    for kind in sorted(event_kinds):
        colour_e, style, text = EVENT_STYLES.get(kind, ("0.5", "--", kind))
        handles.append(Line2D([], [], color=colour_e, linestyle=style))
        names.append(text or kind)
    if title:
        figure.suptitle(title, y=0.995)
    figure.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.975 if title else 1.0),
                  ncol=min(len(names), 6), frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.94 if title else 0.965))
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return drawn


def main(argv=None):
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m gluon_elastic.plot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN.jsonl",
                        help="metrics files (--metrics-file)")
    parser.add_argument("-o", "--out", default="run.png", help="image file (default: %(default)s)")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per file")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    missing = [path for path in args.runs if not os.path.isfile(path)]
    if missing:
        parser.error("no such metrics file: %s" % ", ".join(missing))
    try:
        drawn = plot_runs(args.runs, args.out, labels=args.labels, title=args.title)
    except ValueError as err:
        parser.error(str(err))
    for label, summary in drawn.items():
        events = ", ".join("%d %s" % (n, kind) for kind, n in sorted(summary["events"].items()))
        print("%s: %d steps%s" % (label, summary["steps"], "; events: " + events if events else ""))
    print("wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
