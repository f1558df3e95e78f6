"""`disttrain report RUN_DIR [RUN_DIR ...] [--out DIR]`: a run's story as PNG plots and one self-contained HTML page.

Plots (several runs overlaid, e.g. fp32 vs bf16, 1 vs 2 ranks):
    curves.png      train loss and AUC per logged interval, held-out AUC per evaluation
    throughput.png  samples/s over wall time, per rank (local batch / that rank's step time) and global
    breakdown.png   ms per step by phase (disttrain.phases), a stacked bar per run and rank
    memory.png      per rank: the plan's table memory (weights + optimizer state) beside the measured peak RSS
    scaling.png     a `disttrain plan --simulate ... --out DIR` directory: the predicted step per world size, split
                    into compute, exchange and all-reduce, with samples/s (and measured steps where recorded)
The page (`report.html`) embeds the plots and holds, per run, its headline figures, the resolved config, the plan
table and the worker pinning table. A run directory that lacks files, or was written by an older disttrain, is
reported as such; everything it does hold is still rendered. A run directory may be on object storage
(`run.output_dir=s3://bucket/runs/r1`): its files are read from there and the report is written locally
(by default `./report-<run name>`).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from disttrain.errors import DataError
from disttrain.phases import PHASES
from disttrain.storage import filesystem, is_remote, join, local, remote_call

PLOTS = ("curves", "throughput", "breakdown", "memory", "scaling")
RUN_FILES = ("summary.json", "config.yaml", "simulate.json")  # what a report reads of a run directory
KEY = "RUN_DIR"  # how errors name a run directory (`disttrain report RUN_DIR`)


@dataclass
class Run:
    path: str  # the run directory as named: a local path or a URL
    label: str
    summary: dict = field(default_factory=dict)
    config_text: str = ""
    simulate: dict = field(default_factory=dict)  # simulate.json of `disttrain plan --simulate --out`
    missing: list[str] = field(default_factory=list)


def read_run_files(run_dir: str | Path) -> dict[str, bytes]:
    """{name: content} of the RUN_FILES a run directory holds, local or on object storage."""
    if is_remote(run_dir):
        return _remote_run_files(str(run_dir))
    path = Path(local(run_dir))
    if not path.is_dir():
        raise DataError(f"{run_dir}: not a directory; expected a run directory (run.output_dir of a disttrain run)")
    return {name: (path / name).read_bytes() for name in RUN_FILES if (path / name).is_file()}


def _remote_run_files(url: str) -> dict[str, bytes]:
    fs, root = filesystem(url, key=KEY)

    def listing() -> list[dict]:
        try:
            return fs.ls(root, detail=True)
        except FileNotFoundError:
            return []

    entries = remote_call(url, KEY, listing)
    if not entries or all(e["name"].rstrip("/") == root.rstrip("/") for e in entries):  # nothing, or one object
        raise DataError(f"{url}: not a directory; expected a run directory (run.output_dir of a disttrain run)")
    present = {e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") != "directory"}
    return {name: remote_call(url, KEY, fs.cat_file, join(root, name)) for name in RUN_FILES if name in present}


def _read_json(name: str, data: bytes, run: Run, lost: str):
    """The file's JSON, or None with a line in `run.missing` saying what is lost (`lost`)."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        run.missing.append(f"{name} is not readable JSON ({exc}): {lost}")
        return None


def load_run(path: str, label: str, files: dict[str, bytes]) -> Run:
    """The run directory `path` (as named) from its files (`read_run_files`)."""
    run = Run(path, label)
    if "simulate.json" in files:
        data = _read_json("simulate.json", files["simulate.json"], run, "no scaling plot")
        if data is not None and not (isinstance(data, dict) and isinstance(data.get("worlds"), list)):
            run.missing.append("simulate.json has no `worlds` list: no scaling plot")
        elif data is not None:
            run.simulate = data
        if "summary.json" not in files:
            return run  # a simulation, not a run
    if "summary.json" in files:
        run.summary = _read_json("summary.json", files["summary.json"], run, "no curves, figures or tables") or {}
    else:
        run.missing.append("summary.json is missing (the run did not finish?): no curves, figures or tables")
    if "config.yaml" in files:
        run.config_text = files["config.yaml"].decode(errors="replace")
    elif run.summary.get("config"):
        import yaml

        run.config_text = yaml.safe_dump(run.summary["config"], sort_keys=False)
    else:
        run.missing.append("config.yaml is missing: no resolved config")
    if run.summary:
        history = run.summary.get("history", [])
        if not any("rank_step_ms" in h for h in history):
            run.missing.append("no per-rank step times in the history (a run from before disttrain recorded them, "
                               "or one shorter than train.log_every): no throughput-per-rank curves")
        if not run.summary.get("breakdown"):
            run.missing.append("no step-time breakdown in summary.json (an older run, or no timed steps)")
        if not all("max_rss_mib" in w for w in run.summary.get("workers", [])):
            run.missing.append("no peak RSS per worker (an older run): memory plot shows the plan only")
    return run


def _plot_curves(runs: list[Run], plt, path: Path) -> bool:
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for run in runs:
        history = run.summary.get("history", [])
        train = [h for h in history if "loss" in h]
        if train:
            drawn = True
            loss_ax.plot([h["step"] for h in train], [h["loss"] for h in train], label=run.label)
            auc_ax.plot([h["step"] for h in train], [h["train_auc"] for h in train], ":", label=f"{run.label} train")
        evals = [h for h in history if "split" in h]
        final = run.summary.get("eval_auc")
        points = [(h["step"], h["auc"]) for h in evals]
        if isinstance(final, (int, float)) and final == final and run.summary.get("steps") is not None:
            points.append((run.summary["steps"], final))
        if points:
            drawn = True
            auc_ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{run.label} held-out")
    loss_ax.set(title="train loss", xlabel="step")
    auc_ax.set(title="AUC", xlabel="step")
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, plt, path, drawn)


def _plot_throughput(runs: list[Run], plt, path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(11, 4))
    drawn = False
    for run in runs:
        history = [h for h in run.summary.get("history", []) if "rank_step_ms" in h]
        if not history:
            continue
        world = run.summary.get("world_size", len(history[0]["rank_step_ms"]))
        local = run.summary.get("global_batch_size", 0) / max(world, 1)
        times = _training_time(history)
        ax.plot(times, [h["samples_per_s"] for h in history], "-", linewidth=2, label=f"{run.label} global")
        for rank in range(len(history[0]["rank_step_ms"])):
            ax.plot(times, [local / (h["rank_step_ms"][rank] / 1e3) if h["rank_step_ms"][rank] else 0 for h in history],
                    "--", label=f"{run.label} rank {rank} (local batch / its step time)")
        drawn = True
    ax.set(title="samples/s over time", xlabel="seconds since start", ylabel="samples/s")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return _save(fig, plt, path, drawn)


def _training_time(history: list[dict]) -> list[float]:
    """Each record's seconds of training so far. A run resumed by an older disttrain restarted its clock at the
    resume: a record earlier than the one before continues from it instead of going back in time."""
    out, offset, previous = [], 0.0, 0.0
    for record in history:
        t = record.get("time_s", 0.0) + offset
        if t < previous:
            offset += previous - t
            t = previous
        out.append(t)
        previous = t
    return out


def _plot_breakdown(runs: list[Run], plt, path: Path) -> bool:
    bars = [(f"{run.label}\nrank {r['rank']}", r) for run in runs if run.summary.get("breakdown")
            for r in run.summary["breakdown"]["per_rank"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(bars) + 3), 4.5))
    bottoms = [0.0] * len(bars)
    for name in PHASES:
        values = [r["phases"].get(name, 0.0) for _, r in bars]
        ax.bar(range(len(bars)), values, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.plot(range(len(bars)), [r["step_ms"] for _, r in bars], "k_", markersize=30, label="measured step")
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.set(title="step time by phase", ylabel="ms per step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, plt, path, bool(bars))


def _plot_memory(runs: list[Run], plt, path: Path) -> bool:
    labels, planned, measured = [], [], []
    for run in runs:
        ranks = run.summary.get("plan", {}).get("ranks", [])
        workers = {w.get("rank"): w for w in run.summary.get("workers", [])}
        for r in ranks:
            labels.append(f"{run.label}\nrank {r['rank']}")
            planned.append(r.get("bytes", 0) / 2**20)
            measured.append(workers.get(r["rank"], {}).get("max_rss_mib", 0.0) or 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels) + 3), 4.5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], planned, width=0.4, label="plan: tables + optimizer state (MiB)")
    ax.bar([x + 0.2 for x in xs], measured, width=0.4, label="measured peak RSS (MiB)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set(title="memory per rank", ylabel="MiB")
    ax.legend(fontsize=8)
    return _save(fig, plt, path, bool(labels))


def _plot_scaling(runs: list[Run], plt, path: Path) -> bool:
    simulated = [r for r in runs if r.simulate.get("worlds")]
    if not simulated:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in simulated:
        rows = run.simulate["worlds"]
        worlds = [w["world_size"] for w in rows]
        for key, style in (("step_ms", "-o"), ("compute_ms", "--"), ("exchange_ms", ":"), ("allreduce_ms", "-.")):
            axes[0].plot(worlds, [w[key] for w in rows], style, label=f"{run.label}: {key[:-3].replace('_', ' ')}")
        measured = [(w["world_size"], w["measured_step_ms"]) for w in rows if w.get("measured_step_ms")]
        if measured:
            axes[0].plot(*zip(*measured), "k*", markersize=10, label=f"{run.label}: measured step")
        axes[1].plot(worlds, [w["samples_per_s"] for w in rows], "-o", label=f"{run.label}: predicted")
        if measured:
            axes[1].plot([m[0] for m in measured], [w["global_batch"] / w["measured_step_ms"] * 1e3 for w in rows
                                                    if w.get("measured_step_ms")], "k*", markersize=10,
                         label=f"{run.label}: measured")
    for ax, title, label in ((axes[0], "predicted step time (weak scaling)", "ms per step"),
                             (axes[1], "predicted throughput", "samples/s")):
        ax.set_xscale("log", base=2)
        ax.set(title=title, xlabel="ranks", ylabel=label)
        ax.legend(fontsize=7)
    return _save(fig, plt, path, True)


def _save(fig, plt, path: Path, drawn: bool) -> bool:
    if drawn:
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def _text(value) -> str:
    """Any value of a run's files as HTML text: markup in a name, a host or a config value is shown, never run
    (quotes too, so it is safe inside an attribute)."""
    return html.escape(str(value), quote=True)


def _number(value, spec: str, scale: float = 1.0) -> str:
    """A number formatted by `spec` (divided by `scale`); anything else (a foreign summary.json) as it is."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return format(value / scale, spec) if numeric else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(s: dict) -> str:
    keys = ("model", "flavor", "world_size", "launcher", "steps", "global_batch_size", "samples_per_s",
            "eval_auc", "eval_logloss", "eval_accuracy", "precision", "train_loss")
    rows = [[k, f"{s[k]:,.4f}" if isinstance(s[k], float) else s[k]] for k in keys if k in s]
    return _table(["figure", "value"], rows)


def _breakdown(b: dict) -> str:
    spreads = [*((name, b["phases"].get(name, {})) for name in PHASES), ("step", b.get("step_ms", {}))]
    rows = [[name, *(_number(spread.get(k, ""), ".2f") for k in ("min", "median", "max"))] for name, spread in spreads]
    return (f"<h3>Step-time breakdown (ms per step over ranks; slowest rank {_text(b.get('slowest_rank', '?'))})</h3>"
            + _table(["phase", "min", "median", "max"], rows))


def _plan(plan: dict) -> str:
    rows = [[t["name"], t["type"], t["rows"], t["dim"], ", ".join(map(str, t["ranks"]))] for t in plan["tables"]]
    ranks = [[r["rank"], _number(r["weight_bytes"], ".1f", 2**20), _number(r["optimizer_bytes"], ".1f", 2**20),
              r["num_shards"]] for r in plan.get("ranks", [])]
    return ("<h3>Sharding plan</h3>" + _table(["table", "type", "rows", "dim", "ranks"], rows)
            + _table(["rank", "weights MiB", "optimizer MiB", "shards"], ranks))


def _simulated(worlds: list[dict]) -> str:
    times = ("step_ms", "compute_ms", "exchange_ms", "allreduce_ms")
    rows = [[w["world_size"], w["nodes"], *(_number(w[k], ".2f") for k in times), _number(w["samples_per_s"], ",.0f"),
             _number(w["measured_step_ms"], ".2f") if w.get("measured_step_ms") else "",
             _number(w["memory_mib_per_rank"]["max"], ",.1f"), ", ".join(f"{k} {v}" for k, v in w["types"].items())]
            for w in worlds]
    return "<h3>Simulated weak scaling</h3>" + _table(
        ["ranks", "nodes", "step ms", "compute", "exchange", "all-reduce", "samples/s", "measured ms",
         "memory MiB max", "types"], rows)


def _workers(workers: list[dict]) -> str:
    rows = [[w.get("rank"), w.get("host"), w.get("pid"), _cpus(w.get("cpus")), w.get("numa_node"),
             w.get("threads"), w.get("allocator"), w.get("device", "cpu"),
             _number(w["max_rss_mib"], ".0f") if "max_rss_mib" in w else "?"] for w in workers]
    return "<h3>Workers (pinning)</h3>" + _table(
        ["rank", "host", "pid", "cpus", "numa", "threads", "allocator", "device", "peak RSS MiB"], rows)


def _run_section(run: Run) -> str:
    """A run's part of the page. Every value read from its files goes through `_text` (here or in `_table`)."""
    s = run.summary
    parts = [f"<h2>{_text(run.label)}</h2><p class=path>{_text(run.path)}</p>"]
    if run.missing:
        parts.append("<ul class=missing>" + "".join(f"<li>{_text(m)}</li>" for m in run.missing) + "</ul>")
    if s:
        parts.append("<h3>Figures</h3>" + _figures(s))
    if s.get("breakdown"):
        parts.append(_breakdown(s["breakdown"]))
    if s.get("plan", {}).get("tables"):
        parts.append(_plan(s["plan"]))
    if run.simulate.get("worlds"):
        parts.append(_simulated(run.simulate["worlds"]))
    if s.get("workers"):
        parts.append(_workers(s["workers"]))
    if run.config_text:
        parts.append(f"<h3>Resolved config</h3><pre>{_text(run.config_text)}</pre>")
    return "\n".join(parts)


def _cpus(cpus) -> str:
    if not cpus:
        return ""
    if not (isinstance(cpus, list) and all(isinstance(c, int) for c in cpus)):
        return str(cpus)  # not what disttrain writes: shown as it is
    from disttrain.runtime.topology import format_cpus

    return format_cpus(cpus)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>disttrain report: {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}} pre{{background:#f6f6f6;padding:1em;
font-size:12px;max-height:30em;overflow:auto}} .missing li{{color:#a40}} img{{max-width:100%;display:block;
margin:1em 0}} .path{{color:#666;font-size:12px}}</style></head>
<body data-images-ok="pending"><h1>disttrain report</h1><p>{runs}</p>
{images}
{sections}
<script>
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.length > 0 && imgs.every(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images-ok", ok ? "true" : "false");
  document.body.setAttribute("data-images", String(imgs.length));
}});
</script></body></html>
"""


def _name(run_dir: str) -> str:
    """The run directory's last component (`s3://b/runs/r1` -> `r1`)."""
    return str(run_dir).rstrip("/").rsplit("/", 1)[-1] or str(run_dir)


def default_out(run_dirs: list[str | Path]) -> Path:
    """Where a report goes unless told: RUN_DIR/report, or ./report-<run name> for a run on object storage."""
    first = str(run_dirs[0])
    return Path(f"report-{_name(first)}") if is_remote(first) else Path(local(first)) / "report"


def render(run_dirs: list[str | Path], out: str | Path | None = None) -> dict:
    """Write the PNGs and report.html into `out` (a local directory; default: `default_out`); returns what was
    written and what each run lacks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if out is not None and is_remote(out):
        raise DataError(f"--out: {out}: the report is written to a local directory; expected a local path")
    names = [str(p) for p in run_dirs]
    files = [read_run_files(name) for name in names]
    labels = [_name(name) for name in names]
    if len(set(labels)) < len(labels):
        labels = names
    runs = [load_run(name, label, held) for name, label, held in zip(names, labels, files)]
    if not any(r.summary or r.config_text or r.simulate for r in runs):
        raise DataError(f"{', '.join(names)}: no summary.json or config.yaml in any of them; expected "
                        "run directories written by `disttrain launch`/`train`")
    out = Path(out) if out is not None else default_out(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    drawers = {"curves": _plot_curves, "throughput": _plot_throughput, "breakdown": _plot_breakdown,
               "memory": _plot_memory, "scaling": _plot_scaling}
    written = [name for name in PLOTS if drawers[name](runs, plt, out / f"{name}.png")]
    images = "\n".join(
        f'<h2>{name}</h2><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode((out / f"{name}.png").read_bytes()).decode()}">' for name in written)
    page = PAGE.format(title=_text(", ".join(labels)), runs="Runs: " + ", ".join(_text(label) for label in labels),
                       images=images,
                       sections="\n".join(_run_section(r) for r in runs))
    (out / "report.html").write_text(page)
    return {"html": str(out / "report.html"), "plots": [str(out / f"{n}.png") for n in written],
            "missing": {r.label: r.missing for r in runs if r.missing}}
