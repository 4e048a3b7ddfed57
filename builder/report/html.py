"""The HTML page of `azbuild report --html FILE`: one static, self-contained file (its style
inline, no script, nothing fetched), one row per template, links relative to the page so
that the page and the output directory can be published together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from builder import __version__
from builder.image.disk import write_named_output
from builder.redact import redact
from builder.report.diff import Change
from builder.report.nightly import Build, Row, RunReport

log = logging.getLogger(__name__)

_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="azbuild {{ version }}">
<title>azbuild report: {{ output_dir }}</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
         color: #1f2328; background: #fff; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  .meta { color: #59636e; margin: 0 0 16px; }
  .totals span { display: inline-block; margin-right: 14px; font-weight: 600; }
  table.builds { border-collapse: collapse; width: 100%; }
  table.builds > thead th { text-align: left; font-size: 12px; text-transform: uppercase;
         letter-spacing: .04em; color: #59636e; border-bottom: 2px solid #d1d9e0;
         padding: 6px 10px; }
  table.builds > tbody > tr > td { vertical-align: top; padding: 10px;
         border-bottom: 1px solid #d1d9e0; }
  tr.build.failed { background: #fff5f5; }
  .name { font-weight: 600; font-size: 15px; }
  .sub { color: #59636e; font-size: 12px; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; }
  .badge.succeeded { background: #1a7f37; } .badge.failed { background: #cf222e; }
  .badge.changed { background: #0969da; } .badge.unchanged { background: #8c959f; }
  .failure { color: #a40e26; margin-top: 4px; max-width: 28em; overflow-wrap: anywhere; }
  ol.steps { list-style: none; margin: 0; padding: 0; min-width: 11em; }
  ol.steps li { display: flex; justify-content: space-between; gap: 12px; }
  ol.steps li.failed { color: #cf222e; font-weight: 600; }
  .num { font-variant-numeric: tabular-nums; white-space: nowrap; }
  .pass { color: #1a7f37; } .fail { color: #cf222e; font-weight: 600; }
  .warn { color: #9a6700; } .skip { color: #59636e; }
  details summary { cursor: pointer; color: #0969da; font-size: 12px; }
  table.inner { border-collapse: collapse; margin-top: 4px; font-size: 12px; }
  table.inner td, table.inner th { padding: 1px 8px 1px 0; text-align: left;
         vertical-align: top; }
  .changes h3 { font-size: 12px; margin: 6px 0 2px; color: #59636e; text-transform: uppercase;
         letter-spacing: .04em; }
  .changes h3:first-child { margin-top: 0; }
  .changes ul { margin: 0; padding: 0; list-style: none; }
  .changes .item { font-weight: 600; }
  .added { color: #1a7f37; } .removed { color: #cf222e; } .upgraded { color: #0550ae; }
  .files a { display: inline-block; margin-right: 10px; }
  a { color: #0969da; }
</style>
</head>
<body>
<h1>azbuild report</h1>
<p class="meta">{{ output_dir }} &middot; generated {{ generated }} by azbuild {{ version }}
  &middot; changes are against the previous good build (succeeded, ready) of the same
  template</p>
<p class="totals">
  <span id="total-templates">{{ rows|length }} template{{ "" if rows|length == 1 else "s" }}</span>
  <span id="total-succeeded" class="pass">{{ succeeded }} succeeded</span>
  <span id="total-failed" class="{{ 'fail' if failed else 'skip' }}">{{ failed }} failed</span>
  <span id="total-changed">{{ changed }} changed</span>
</p>
<table class="builds">
<thead><tr>
  <th>template</th><th>status</th><th>duration per step</th><th>readiness</th>
  <th>stage cache</th><th>changes since the previous good build</th><th>files</th>
</tr></thead>
<tbody>
{% for row in rows %}
<tr class="build {{ row.css }}" id="build-{{ row.name }}" data-template="{{ row.name }}"
    data-status="{{ row.status }}">
  <td><div class="name">{{ row.name }}</div>
    <div class="sub">build {{ row.build_id }}</div>
    <div class="sub">finished {{ row.finished }}</div>
    <div class="sub">in {{ row.directory }}</div></td>
  <td class="status"><span class="badge {{ row.css }}">{{ row.status }}</span>
    {% if row.compared %}<span class="badge {{ 'changed' if row.changes else 'unchanged' }}">
      {{- 'changed' if row.changes else 'unchanged' }}</span>{% endif %}
    {% if row.failure %}<div class="failure">{{ row.failure }}</div>{% endif %}</td>
  <td><ol class="steps">
    {% for step in row.steps %}<li class="{{ step.css }}"><span>{{ step.name }}</span>
      <span class="num">{{ step.time }}</span></li>{% endfor %}
    <li><strong>total</strong><strong class="num">{{ row.total }}</strong></li></ol></td>
  <td class="readiness">
    {% if row.check %}<span class="pass">{{ row.check_counts.pass }} pass</span>
      {% if row.check_counts.fail %}&middot; <span class="fail">{{ row.check_counts.fail }}
        fail: {{ row.failed_ids }}</span>{% endif %}
      {% if row.check_counts.warn %}&middot; <span class="warn">{{ row.check_counts.warn }}
        warn</span>{% endif %}
      {% if row.check_counts.skip %}&middot; <span class="skip">{{ row.check_counts.skip }}
        skipped</span>{% endif %}
      <details><summary>every requirement</summary><table class="inner">
        {% for line in row.check %}<tr><td>{{ line.id }}</td>
          <td class="{{ line.status }}">{{ line.status }}</td><td>{{ line.title }}</td>
          </tr>{% endfor %}</table></details>
    {% else %}<span class="skip">the check did not run</span>{% endif %}
    {% if row.simulation %}<div class="simulation {{ row.simulation.css }}">
      {{- row.simulation.text }}</div>{% endif %}</td>
  <td class="cache">
    {% if row.cache %}<span class="num">{{ row.cache_hits }} of {{ row.cache|length }}
      hit</span>{% if row.cache_saved %} &middot; saved {{ row.cache_saved }}{% endif %}
      <table class="inner">{% for stage in row.cache %}<tr><td>{{ stage.stage }}</td>
        <td>{{ stage.result }}</td></tr>{% endfor %}</table>
    {% else %}<span class="skip">not used</span>{% endif %}</td>
  <td class="changes">
    {% if row.previous %}<div class="sub">against
      <a class="previous" href="{{ row.previous.href }}">{{ row.previous.label }}</a></div>
    {% endif %}
    {% if row.not_compared %}<span class="skip">{{ row.not_compared }}</span>
    {% elif not row.changes %}<span class="skip">nothing changed</span>
    {% else %}{% for section, items in row.changes %}<h3>{{ section }}</h3><ul>
      {% for item in items %}<li class="{{ item.css }}" data-section="{{ section }}"
        data-item="{{ item.item }}">{{ item.sign }}<span class="item">{{ item.item }}</span>
        {{ item.value }}</li>{% endfor %}</ul>{% endfor %}
    {% endif %}</td>
  <td class="files">{% for label, href in row.files %}<a href="{{ href }}">{{ label }}</a>
    {% endfor %}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% if unreadable %}<h2>Not read</h2><ul>{% for path, why in unreadable %}
  <li>{{ path }}: {{ why }}</li>{% endfor %}</ul>{% endif %}
</body>
</html>
"""

_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                  trim_blocks=True, lstrip_blocks=True)


def render_page(report: RunReport, page: Path) -> str:
    """The page, with links relative to where it is written (`page`), secrets masked."""
    rows = [_row_view(row, page.absolute().parent, report.output_dir) for row in report.rows]
    html = _ENVIRONMENT.from_string(_PAGE).render(
        version=__version__, output_dir=str(report.output_dir),
        generated=_when(report.generated), rows=rows,
        succeeded=sum(row["status"] == "succeeded" for row in rows),
        failed=sum(row["status"] != "succeeded" for row in rows),  # not started included
        changed=sum(bool(row["changes"]) for row in rows),
        unreadable=[(str(path), why) for path, why in report.unreadable])
    return redact(html)


def write_page(report: RunReport, target: Path) -> Path:
    """Write the page atomically (--html FILE)."""
    write_named_output(target, render_page(report, target), "--html")
    log.info("wrote the report %s (%d templates)", target, len(report.rows))
    return target


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _href(path: Path, base: Path) -> str:
    return quote(os.path.relpath(path.absolute(), base))


def _within(path: Path, output_dir: Path) -> str:
    """A build's directory as the reader knows it: relative to the output directory."""
    try:
        return str(path.absolute().relative_to(output_dir.absolute())) or "."
    except ValueError:
        return str(path)


def _row_view(row: Row, base: Path, output_dir: Path) -> dict[str, Any]:
    """What the page shows of one row, as text."""
    build = row.latest
    failure = build.failure
    failing_step = failure.get("step") if failure else None
    counts = {status: sum(line.get("status") == status for line in build.check)
              for status in ("pass", "fail", "warn", "skip")}
    hits = [s for s in build.cache if s.get("result") == "hit"]
    saved = sum(float(s.get("seconds_saved") or 0) for s in hits)
    return {
        "name": build.name,
        "status": build.status,
        "css": "succeeded" if build.status == "succeeded" else "failed",
        "build_id": build.manifest.get("build_id", "?"),
        "finished": _when(build.finished),
        "directory": _within(build.directory, output_dir),
        "failure": (None if build.status == "succeeded" else
                    f"failed in step {failing_step}: {failure.get('error')}"
                    if failure and failing_step else
                    str(failure.get("error")) if failure else build.status),
        "steps": [{"name": name, "time": duration_text(seconds),
                   "css": "failed" if name == failing_step else ""}
                  for name, seconds in build.steps.items()],
        "total": duration_text(build.seconds) if build.seconds is not None else "?",
        "check": build.check, "check_counts": counts,
        "failed_ids": ", ".join(str(line.get("id")) for line in build.check
                                if line.get("status") == "fail"),
        "simulation": _simulation_text(build.manifest.get("simulation")),
        "cache": build.cache, "cache_hits": len(hits),
        "cache_saved": duration_text(saved) if saved else "",
        "compared": row.not_compared is None,
        "not_compared": row.not_compared,
        "changes": _changes_view(row.changes),
        "previous": _previous_view(row.previous_good, base),
        "files": [(label, _href(path, base)) for label, path in build.files().items()],
    }


def _simulation_text(simulation: object) -> dict[str, str] | None:
    """The simulated first boot (docs/simulate.md) in a few words, or None without one."""
    if not isinstance(simulation, dict) or not isinstance(simulation.get("status"), str):
        return None
    status = simulation["status"]
    if status == "skipped":
        return {"css": "skip", "text": f"first boot not simulated ({simulation.get('reason')})"}
    times = [f"{label} {simulation[key]:.0f} s" for label, key in
             (("Ready", "seconds_to_ready"), ("SSH", "seconds_to_ssh"))
             if isinstance(simulation.get(key), int | float)]
    failed = [str(a.get("id")) for a in simulation.get("assertions", [])
              if isinstance(a, dict) and a.get("status") == "fail"]
    text = f"first boot {status}" + (f": {', '.join(times)}" if times else "")
    if failed:
        text += f"; failed: {', '.join(failed)}"
    return {"css": "pass" if status == "passed" else "fail", "text": text}


def _previous_view(previous: Build | None, base: Path) -> dict[str, str] | None:
    if previous is None:
        return None
    label = f"{previous.manifest.get('build_id', '?')}, {_when(previous.finished)}"
    return {"label": label, "href": _href(previous.directory / "manifest.json", base)}


def _changes_view(changes: list[Change]) -> list[tuple[str, list[dict[str, str]]]]:
    """Changes by section, in diff's order: added, removed, or old -> new."""
    sections: dict[str, list[dict[str, str]]] = {}
    for change in map(_readable, changes):
        if change.old is None:
            css, sign, value = "added", "+ ", str(change.new)
        elif change.new is None:
            css, sign, value = "removed", "\u2212 ", str(change.old)
        else:
            css, sign, value = "upgraded", "", f"{change.old} \u2192 {change.new}"
        sections.setdefault(change.section, []).append(
            {"css": css, "sign": sign, "item": change.item, "value": value})
    return list(sections.items())


def _readable(change: Change) -> Change:
    """Sizes in bytes as MiB or GiB, as a reader compares them."""
    if change.section != "sizes":
        return change
    return replace(change, old=_size_text(change.old), new=_size_text(change.new))


def _size_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return f"{int(text) / 1024**2:,.1f} MiB" if text.isdigit() else text


def duration_text(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
