"""Helpers for the /metrics tests: the Prometheus text format and the metric names a PromQL
expression reads."""
import math
import re

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """[(name, {label: value}, value)] for every sample line; raises on a malformed line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"line {n}: not a sample: {line!r}")
        labels = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(m.group(2) or "")}
        out.append((m.group(1), labels, float(m.group(3).replace("+Inf", "inf").replace("-Inf", "-inf"))))
    return out


def family_names(text):
    """Names from `# TYPE` lines plus every sample name (histograms' _bucket/_sum/_count)."""
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    names |= {name for name, _, _ in parse_exposition(text)}
    return names


def find(samples, name, **labels):
    return [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan", "atan2"}
_GROUPING = re.compile(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)')


def promql_metric_names(expr):
    """The metric names a PromQL expression selects (Grafana variables substituted)."""
    e = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    e = re.sub(r'\$\{?[a-zA-Z_]+\}?', "x", e)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)     # string literals (label values, regexes)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r'\{[^{}]*\}', "", e)               # label matchers
    e = re.sub(r'\[[^\[\]]*\]', "", e)             # ranges and subqueries
    e = _GROUPING.sub(" ", e)
    names = set()
    for m in re.finditer(r'[a-zA-Z_:][a-zA-Z0-9_:]*', e):
        word = m.group(0)
        if word.lower() in _KEYWORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # part of a number such as 1e-5
        if re.match(r'\s*\(', e[m.end():]):
            continue  # a function or aggregation
        names.add(word)
    return names


def dashboard_exprs(dashboard):
    """Every PromQL expression of a dashboard: panel targets (rows included) and query variables."""
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r'\s*label_values\((.*),\s*[a-zA-Z_]+\)\s*$', q or "")
            exprs.append((f"variable {var['name']}", m.group(1) if m else q))
    return exprs


def plausible(v, lo, hi):
    return math.isfinite(v) and lo < v < hi
