"""Differential fuzzing of ftd's C++ Jinja interpreter against jinja2 as transformers configures it
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson,
raise_exception, namespace, dict).

Random templates are built from the constructs chat templates use (whitespace control, if/for/set,
namespaces, macros, loop variables, filters, tests, str/dict methods, slicing, operators) and
rendered with random inputs. Where jinja2 renders, ftd must render the same bytes; where jinja2
fails, ftd must fail (with an error, never a crash). The seed and count are fixed so a failure
reproduces; FTD_FUZZ_CASES raises the count. The number of cases run is printed.
"""
import json
import os
import random
import re
import subprocess

import pytest

from conftest import build_dir

pytest.importorskip("transformers")
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

BINARY = build_dir() / "bin" / "ftd-train"
if not BINARY.exists():
    BINARY = build_dir() / "bin" / "ftd-tokenize"
pytestmark = pytest.mark.skipif(not BINARY.exists(), reason=f"{BINARY} is not built")

CASES = int(os.environ.get("FTD_FUZZ_CASES", "1500"))

NAMES = ["x", "n", "s", "l", "d", "m", "messages", "tools", "flag", "missing"]
FILTERS = ["trim", "upper", "lower", "length", "string", "list", "first", "last", "tojson", "title", "capitalize",
           "int", "float", "abs", "reverse", "sort", "unique", "items", "dictsort", "safe", "e", "count", "sum",
           "min", "max", "default('dflt')", "default('', true)", "join(', ')", "join", "replace('a', 'b')",
           "indent(2)", "indent(4, first=true)", "tojson(indent=2)", "map(attribute='role')",
           "selectattr('role', 'equalto', 'user')", "rejectattr('role', 'equalto', 'user')", "map('upper')",
           "select('defined')", "reject('none')", "trim('x')", "round(1)", "batch(2)", "wordcount", "center(9)"]
TESTS = ["defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable", "sequence",
         "boolean", "true", "false", "odd", "even", "divisibleby(3)", "equalto('a')", "in(['a', 'b'])", "lower",
         "upper", "callable", "sameas(none)", "gt(1)", "eq 2"]
METHODS = ["strip()", "lstrip()", "rstrip('\\n')", "split()", "split(',')", "split(',', 1)", "rsplit(' ', 1)",
           "startswith('a')", "endswith(('b', 'c'))", "replace('a', 'x')", "upper()", "lower()", "title()",
           "find('b')", "count('a')", "splitlines()", "get('role')", "get('k', 0)", "items()", "keys()", "values()",
           "format(1, 2)", "index('a')", "isdigit()", "partition(',')", "removeprefix('a')", "zfill(4)"]
LITERALS = ["1", "0", "-3", "2.5", "1e-5", "'a'", "\"b c\"", "'a,b, c'", "''", "none", "true", "false", "[1, 2, 3]",
            "['a', 'b']", "[]", "{'k': 1, 'a': 'b'}", "{}", "(1, 'x')", "'  pad \\n'", "'é✓'", "'\\t'"]


NUMBERS = ["1", "0", "-3", "2.5", "n", "x", "loop.index", "ns.v", "l|length", "messages|length"]
STRINGS = ["'a'", "s", "m.role", "m.content", "messages[0].content", "'  pad \\n'", "'é✓'", "d.a", "''"]


def typed(r, depth=0):
    """Expressions whose operands mostly fit their operators (so most renders succeed)."""
    kind = r.random()
    if kind < 0.35:
        a, b = r.choice(NUMBERS), r.choice(NUMBERS)
        return f"({a} {r.choice(['+', '-', '*', '//', '%', '<', '>=', '==', '!='])} {b})"
    if kind < 0.65:
        a = r.choice(STRINGS)
        b = r.choice(STRINGS)
        return r.choice([f"{a} + {b}", f"{a} ~ {b}", f"{a} in {b}", f"{a} ~ {r.choice(NUMBERS)}",
                         f"{a} | {r.choice(['trim', 'upper', 'title', 'length', 'tojson', 'replace(' + repr('a') + ', ' + repr('b') + ')'])}",
                         f"{a}.{r.choice(['strip()', 'split()', 'upper()', 'startswith(' + repr('a') + ')', 'split(' + repr(',') + ')[0]'])}",
                         f"{a}[{r.choice(['0', '-1', '1:', '::-1', ':2'])}]"])
    if kind < 0.85:
        return r.choice(["messages | selectattr('role', 'equalto', 'user') | list | length",
                         "messages | map(attribute='role') | join('/')", "messages[-1].content.split('</think>')[-1]",
                         "(messages | last).role", "tools | tojson", "d | tojson(indent=2)", "d.items() | list",
                         "d.get('k', 5)", "l | select('string') | list", "messages[1:] | length",
                         "m.content is string", "m.tool_calls is defined", "flag and m.role == 'user'",
                         "'x' if flag else 'y'", "ns.v + 1", "loop.last if loop is defined else 0"])
    return expr(r, depth + 1)


def expr(r, depth=0):
    if depth == 0 and r.random() < 0.7:
        return typed(r)
    choice = r.random()
    if depth > 2 or choice < 0.25:
        return r.choice(LITERALS + NAMES + ["m.role", "m.content", "messages[0]", "messages[-1].content",
                                            "d.k", "d['a']", "l[1:]", "s[::-1]", "s[1]", "ns.v", "loop.index"])
    if choice < 0.40:
        return f"{expr(r, depth + 1)} | {r.choice(FILTERS)}"
    if choice < 0.50:
        return f"{expr(r, depth + 1)} is {r.choice(['', 'not '])}{r.choice(TESTS)}"
    if choice < 0.60:
        return f"({expr(r, depth + 1)}).{r.choice(METHODS)}"
    if choice < 0.78:
        op = r.choice(["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">=", "in", "not in", "and", "or"])
        return f"{expr(r, depth + 1)} {op} {expr(r, depth + 1)}"
    if choice < 0.85:
        return f"{expr(r, depth + 1)} if {expr(r, depth + 1)} else {expr(r, depth + 1)}"
    if choice < 0.90:
        return f"not {expr(r, depth + 1)}"
    if choice < 0.95:
        return f"[{expr(r, depth + 1)}, {expr(r, depth + 1)}]"
    return f"{r.choice(NAMES + STRINGS)}[{r.choice(['0', '-1', '1:', ':2', '::2', repr('a'), 'n'])}]"


def ws(r):
    return r.choice(["", "", " ", "\n", "  \n", "\n  ", "\t", "x\n", " y "])


def tag(r, body):
    left = r.choice(["", "-", "+", ""])
    right = r.choice(["", "-", "", "+"])
    return f"{{%{left} {body} {right}%}}"


def stmt(r, depth=0):
    choice = r.random()
    if depth > 2 or choice < 0.30:
        return ws(r) + f"{{{{{r.choice(['', '-'])} {expr(r)} {r.choice(['', '-'])}}}}}" + ws(r)
    if choice < 0.50:
        out = tag(r, f"if {expr(r)}") + block(r, depth)
        if r.random() < 0.5:
            out += tag(r, f"elif {expr(r)}") + block(r, depth)
        if r.random() < 0.5:
            out += tag(r, "else") + block(r, depth)
        return out + tag(r, "endif") + ws(r)
    if choice < 0.68:
        target, source = r.choice([("m", "messages"), ("i", "range(3)"), ("c", "s"), ("k", "d"), ("k, v", "d.items()"),
                                   ("e", "l"), ("t", "tools")])
        cond = f" if {expr(r)}" if r.random() < 0.2 else ""
        body = block(r, depth)
        if r.random() < 0.2:
            body += tag(r, r.choice(["break", "continue"]))
        out = tag(r, f"for {target} in {source}{cond}") + body
        if r.random() < 0.2:
            out += tag(r, "else") + block(r, depth)
        return out + tag(r, "endfor") + ws(r)
    if choice < 0.80:
        return tag(r, f"set {r.choice(['x', 'n', 's', 'y'])} = {expr(r)}") + ws(r)
    if choice < 0.88:
        return tag(r, f"set ns.v = {expr(r)}") + ws(r)
    if choice < 0.93:
        return "{# comment #}" + ws(r)
    if choice < 0.97:
        return tag(r, "macro mac(a, b='B')") + block(r, depth) + tag(r, "endmacro") + f"{{{{ mac({expr(r)}) }}}}"
    return tag(r, "filter upper") + block(r, depth) + tag(r, "endfilter")


def block(r, depth):
    return "".join(stmt(r, depth + 1) for _ in range(r.randint(1, 3)))


def template(r):
    return "{% set ns = namespace(v=0) %}" + "".join(stmt(r) for _ in range(r.randint(1, 4)))


def contexts(r):
    base = {"x": 3, "n": 2, "s": "a,b, c", "l": [1, "a", None], "d": {"k": 1, "a": "b"}, "flag": True,
            "m": {"role": "user", "content": " hi "},
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "a,b"},
                         {"role": "assistant", "content": "<think>r</think>\n\nok"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    other = dict(base, x="text", n=0, s="", l=[], d={}, flag=False, messages=[{"role": "user", "content": ""}],
                 tools=None)
    return [base, other]


def test_random_templates_match_jinja2(tmp_path):
    rng = random.Random(20261205)
    tpl_path = tmp_path / "t.jinja"
    inp = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    compared = rendered = errors = 0
    mismatches = []
    for case in range(CASES):
        source = template(rng)
        ctxs = contexts(rng)
        tpl_path.write_text(source, encoding="utf-8")
        inp.write_text("".join(json.dumps(c) + "\n" for c in ctxs), encoding="utf-8")
        res = subprocess.run([str(BINARY), "chat-template", "--template", str(tpl_path), "--input", str(inp),
                              "--out", str(out), "--raw", "--keep-going"], capture_output=True, text=True, timeout=60)
        assert res.returncode in (0, 1), f"case {case} crashed ({res.returncode}): {res.stderr}\n{source}"
        try:
            compiled = _compile_jinja_template(source)
        except Exception:  # noqa: BLE001 - a syntax error: ours must reject the template too
            compiled = None
        if not out.exists():
            assert compiled is None, f"case {case}: ftd rejected a template jinja2 accepts: {res.stderr}\n{source}"
            errors += len(ctxs)
            compared += len(ctxs)
            continue
        ours = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        out.unlink()
        assert compiled is not None, f"case {case}: ftd accepted a template jinja2 rejects:\n{source}"
        for ctx, o in zip(ctxs, ours):
            compared += 1
            try:
                theirs = compiled.render(**ctx)
            except Exception as e:  # noqa: BLE001
                errors += 1
                if "error" not in o:
                    mismatches.append((case, source, ctx, f"jinja2 raised {type(e).__name__}: {e}", o))
                continue
            rendered += 1
            # A generator prints as "<generator object NAME at 0xADDRESS>" in Python.
            theirs = re.sub(r"<generator object [^>]*>", "<generator object>", theirs, flags=re.I)
            if "text" in o:
                o["text"] = re.sub(r"<generator object>", "<generator object>", o["text"], flags=re.I)
            if o.get("text") != theirs:
                mismatches.append((case, source, ctx, theirs, o))
    print(f"fuzz: {CASES} templates, {compared} renders ({rendered} rendered, {errors} failed in both)")
    for m in mismatches[:int(os.environ.get("FTD_FUZZ_SHOW", "0"))]:
        print("MISMATCH", repr(m[1]), "\n   theirs:", repr(m[3])[:300], "\n   ours:  ", repr(m[4])[:300])
    assert not mismatches, f"{len(mismatches)} mismatches; first: {mismatches[0]!r}"
    assert rendered > compared // 4
