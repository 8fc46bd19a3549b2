"""One self-contained HTML page (templates/page.html.j2): sections of escaped HTML plus plotly
figures.

plotly.js goes in once (inline, or one shared file for a published site); each figure's JSON
sits in a `<script type="application/json">` block with `<`, `>` and `&` written as JSON
escapes, so no string from a result can close the block or start markup; a single loader
draws them all with one shared template.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from markupsafe import Markup
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs

from bench.report.templating import render

TEMPLATE = "plotly_white"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cfd8e3}
nav{padding:6px 24px;background:#e9eef3;font-size:13px}
nav a{margin-right:14px;color:#1f4e79}
main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:6px;margin:14px 0;padding:10px 16px}
h2{font-size:17px;margin:6px 0 10px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border-bottom:1px solid #eceff2;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.diff td{background:#fff6db}
.slower{color:#b3261e;font-weight:600}.faster{color:#1e7b34;font-weight:600}.same{color:#555}
.warning{border-left:4px solid #e0a000;padding:4px 10px;margin:6px 0;background:#fffbea}
.info{border-left:4px solid #6b9bd1;padding:4px 10px;margin:6px 0;background:#f2f7fd}
.muted{color:#777}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}
.figure{width:100%;min-height:200px}
details summary{cursor:pointer;color:#1f4e79}
"""

LOADER = """
(function(){
  var template = JSON.parse(document.getElementById('bench-template').textContent);
  var config = {responsive: true, displaylogo: false};
  document.querySelectorAll('script[type="application/json"][data-figure]').forEach(function(s){
    var fig = JSON.parse(s.textContent);
    fig.layout.template = template;
    Plotly.newPlot(s.getAttribute('data-figure'), fig.data, fig.layout, config);
  });
  window.benchDrawnMs = performance.now();
  document.body.setAttribute('data-figures-drawn', 'yes');
})();
"""


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no '<', '>', '&', U+2028/2029 left)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@dataclass
class Page:
    title: str
    subtitle: str = ""
    sections: list[tuple[str, str, Markup]] = field(default_factory=list)  # anchor, title, html
    figures: int = 0

    def figure(self, fig: go.Figure) -> Markup:
        """HTML for one figure: an empty div and its JSON (template left to the loader)."""
        self.figures += 1
        fig.layout.template = None
        data = pio.to_json(fig, validate=False, remove_uids=True)
        return render("figure.html.j2", div=f"fig{self.figures}",
                      data=Markup(script_json(data)))  # noqa: S704 (escaped for <script>)

    def add(self, anchor: str, title: str, body: Markup | str) -> None:
        """A section; `body` is HTML from a template (Markup) or plain text (escaped)."""
        self.sections.append((anchor, title, body if isinstance(body, Markup) else
                              Markup(f"<p>{esc(body)}</p>")))  # noqa: S704

    def render(self, plotlyjs: str = "inline") -> str:
        """The page; `plotlyjs` is "inline" or a relative URL of a shared plotly.min.js."""
        template = pio.templates[TEMPLATE].to_plotly_json()
        return str(render(
            "page.html.j2", title=self.title, subtitle=self.subtitle, sections=self.sections,
            plotlyjs=plotlyjs, css=Markup(CSS),  # noqa: S704 (constants)
            library=Markup(get_plotlyjs()) if plotlyjs == "inline" else "",  # noqa: S704
            template_json=Markup(script_json(to_json_plotly(template))),  # noqa: S704
            loader=Markup(LOADER))) + "\n"  # noqa: S704


def write_plotlyjs(path: Any) -> None:
    """The shared plotly.js of a published site."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(get_plotlyjs())
