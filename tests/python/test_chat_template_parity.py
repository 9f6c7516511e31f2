"""Chat templates rendered by ftd's C++ Jinja interpreter (engine/data/jinja, through the
`chat-template` command) against transformers' apply_chat_template, byte for byte.

Templates: the real chat templates of many model families, kept as text fixtures in
tests/data/chat_templates/ (their sources are listed in SOURCES.md there). Setting
FTD_CHAT_TEMPLATE_SDIST=1 also runs every template that the llama-cpp-python sdist on PyPI ships
(vendor/llama.cpp/models/templates, 70+ models; downloaded once, about 75 MB).

Each template renders a set of conversations (system prompts, multi-turn, tool calls and tool
results with a tools list, reasoning, documents, unicode and whitespace edges) with
add_generation_prompt on and off and several template keyword sets (enable_thinking on/off,
reasoning_effort). Where transformers raises (e.g. a template's raise_exception for roles it
does not support), ftd must fail too, with the template's message.

Then: token ids and assistant masks equal transformers' return_assistant_tokens_mask for
templates with {% generation %}; loss masks from prefix renders for templates without; clear
errors for malformed templates; and a differential fuzz pass over random small templates.

The binary is $FTD_BUILD_DIR/bin/ftd-train (or ftd-tokenize, the same command without LibTorch).
"""
import json
import os
import pathlib
import random
import subprocess
import sys
import tarfile

import pytest

from conftest import build_dir, train_bpe_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data" / "chat_templates"
BINARY = build_dir() / "bin" / "ftd-train"
if not BINARY.exists():
    BINARY = build_dir() / "bin" / "ftd-tokenize"

pytestmark = pytest.mark.skipif(not BINARY.exists(), reason=f"{BINARY} is not built")

# Special tokens per model family (what their tokenizer_config.json declares); matched on the
# template's file name.
FAMILY_TOKENS = [
    (("llama-3", "Llama-3", "Hermes", "functionary", "firefunction", "Nemotron-Super", "R1-Distill-Llama"),
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    (("Qwen", "QwQ", "R1-Distill-Qwen", "MiMo"), {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    (("deepseek", "DeepSeek"), {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}),
    (("mistral", "Mistral", "Devstral", "Ministral"), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    (("gemma",), {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    (("Phi",), {"eos_token": "<|endoftext|>", "unk_token": "<unk>"}),
    (("gpt-oss",), {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"}),
]
DEFAULT_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
ALL_SPECIALS = sorted({t for _, tokens in FAMILY_TOKENS for t in tokens.values()} | set(DEFAULT_TOKENS.values()) | {
    "<|im_start|>", "<|start_header_id|>", "<|end_header_id|>", "<|start|>", "<|message|>", "<|end|>",
    "<|channel|>", "<｜User｜>", "<｜Assistant｜>", "<start_of_turn>", "<end_of_turn>", "<|user|>",
    "<|assistant|>", "<|system|>"})


def tokens_for(name):
    for keys, tokens in FAMILY_TOKENS:
        if any(k in name for k in keys):
            return tokens
    return DEFAULT_TOKENS


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Local time.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": []}}}


def call(name, arguments, call_id=None):
    c = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id:
        c["id"] = call_id
    return c


CONVERSATIONS = {
    "system_user_assistant": {"messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."}]},
    "multi_turn": {"messages": [
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour.\nJust one."},
        {"role": "assistant", "content": "Blue."}]},
    "user_only": {"messages": [{"role": "user", "content": "Write a haiku about rain."}]},
    "system_user": {"messages": [{"role": "system", "content": "Answer in French."},
                                 {"role": "user", "content": "Good morning"}]},
    "reasoning_field": {"messages": [
        {"role": "user", "content": "Is 17 prime?"},
        {"role": "assistant", "content": "Yes.", "reasoning_content": "17 has no divisors but 1 and 17."},
        {"role": "user", "content": "And 21?"},
        {"role": "assistant", "content": "No, 21 = 3 x 7.", "reasoning_content": "3 * 7 = 21."}]},
    "think_inline": {"messages": [
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "<think>\nEasy one.\n</think>\n\nRome."}]},
    "tool_calls": {"tools": [WEATHER_TOOL, TIME_TOOL], "messages": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris"}, "call_1")]},
        {"role": "tool", "content": "{\"temperature\": 21, \"sky\": \"clear\"}", "name": "get_weather",
         "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 21°C and clear in Paris."}]},
    "parallel_tool_calls": {"tools": [WEATHER_TOOL, TIME_TOOL], "messages": [
        {"role": "user", "content": "Weather and time in Tokyo?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            call("get_weather", {"city": "Tokyo", "unit": "celsius"}, "a1"), call("get_time", {"tz": "Asia/Tokyo"}, "a2")]},
        {"role": "tool", "content": "18", "name": "get_weather", "tool_call_id": "a1"},
        {"role": "tool", "content": "09:30", "name": "get_time", "tool_call_id": "a2"},
        {"role": "assistant", "content": "18°C, and it is 09:30."}]},
    "tools_listed_only": {"tools": [WEATHER_TOOL], "messages": [{"role": "user", "content": "Hello"}]},
    "string_arguments": {"tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None,
         "tool_calls": [call("get_weather", "{\"city\": \"Oslo\"}", "s1")]},
        {"role": "tool", "content": "-3", "tool_call_id": "s1"},
        {"role": "assistant", "content": "-3 degrees."}]},
    "unicode_whitespace": {"messages": [
        {"role": "system", "content": "  Réponds brièvement.  \n"},
        {"role": "user", "content": "  机器学习是什么？ 👍🏽\n\n"},
        {"role": "assistant", "content": "\n一种人工智能方法。\t"}]},
    "documents": {"documents": [{"title": "Tides", "text": "Tides follow the moon."},
                                {"title": "Moon", "text": "The moon orbits Earth."}],
                  "messages": [{"role": "user", "content": "Why are there tides?"}]},
}
KWARGS = [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"reasoning_effort": "low"}]


def template_files():
    files = {p.stem: p for p in sorted(FIXTURES.glob("*.jinja"))}
    if os.environ.get("FTD_CHAT_TEMPLATE_SDIST"):
        for p in sdist_templates():
            files.setdefault(p.stem, p)
    return files


def sdist_templates():
    cache = pathlib.Path(os.environ.get("FTD_CACHE_DIR", pathlib.Path.home() / ".cache" / "ftd")) / "chat_templates"
    if not any(cache.glob("*.jinja")):
        cache.mkdir(parents=True, exist_ok=True)
        dl = cache / "dl"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d",
                        str(dl), "llama-cpp-python==0.3.36"], check=True, timeout=900)
        with tarfile.open(next(dl.glob("*.tar.gz"))) as tar:
            for member in tar.getmembers():
                if "/vendor/llama.cpp/models/templates/" in member.name and member.name.endswith(".jinja"):
                    (cache / pathlib.Path(member.name).name).write_bytes(tar.extractfile(member).read())
    return sorted(cache.glob("*.jinja"))


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = train_bpe_tokenizer(["hello world 2+2 Paris weather", "机器学习 人工智能", "Réponds brièvement"] * 3,
                              600, ALL_SPECIALS)
    tok.save(str(d / "tokenizer.json"))
    return d / "tokenizer.json"


def model_dir(tmp_path, name, template, tokenizer_json, extra_config=None):
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({**tokens_for(name), **(extra_config or {})}))
    (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    return d


def run_ours(model, conversations, tmp_path, add_generation_prompt=False, kwargs=None, ids=False, extra=()):
    inp = tmp_path / "conversations.jsonl"
    out = tmp_path / "rendered.jsonl"
    inp.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")
    args = [str(BINARY), "chat-template", "--tokenizer", str(model), "--input", str(inp), "--out", str(out),
            "--keep-going", "--kwargs", json.dumps(kwargs or {}), *extra]
    if add_generation_prompt:
        args.append("--add-generation-prompt")
    if ids:
        args.append("--ids")
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.exists(), res.stderr
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def run_theirs(tok, conversation, add_generation_prompt=False, kwargs=None):
    try:
        return {"text": tok.apply_chat_template(conversation["messages"], tools=conversation.get("tools"),
                                                documents=conversation.get("documents"), tokenize=False,
                                                add_generation_prompt=add_generation_prompt, **(kwargs or {}))}
    except Exception as e:  # noqa: BLE001 - any template failure must be a failure on our side too
        return {"error": f"{type(e).__name__}: {e}"}


TEMPLATES = template_files()


def test_fixtures_cover_the_families():
    names = " ".join(TEMPLATES)
    for family in ["Qwen3", "Qwen2.5", "Llama-3.1", "Llama-3.3", "DeepSeek-V3", "gpt-oss", "Mistral", "gemma", "Phi",
                   "Nemotron", "Kimi", "GLM", "Mixtral"]:
        assert family in names, f"no {family} template in {FIXTURES}"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_render_matches_transformers(name, tokenizer_json, tmp_path):
    template = TEMPLATES[name].read_text(encoding="utf-8")
    model = model_dir(tmp_path, name, template, tokenizer_json)
    tok = AutoTokenizer.from_pretrained(str(model))
    convs = list(CONVERSATIONS.values())
    compared = matched = 0
    failures = []
    for kwargs in KWARGS:
        for agp in (False, True):
            ours = run_ours(model, convs, tmp_path, agp, kwargs)
            for (cname, conv), o in zip(CONVERSATIONS.items(), ours):
                t = run_theirs(tok, conv, agp, kwargs)
                compared += 1
                if "text" in t and o.get("text") == t["text"]:
                    matched += 1
                elif "error" in t and "error" in o:
                    matched += 1
                    raised = t["error"].split(": ", 1)[1] if t["error"].startswith("TemplateError") else None
                    if raised:  # the template's own raise_exception message comes through
                        assert raised in o["error"], (cname, raised, o["error"])
                else:
                    failures.append((cname, kwargs, agp, t, o))
    assert not failures, f"{len(failures)}/{compared} renders differ; first: {failures[0]!r}"
    assert matched == compared


def test_template_from_tokenizer_config_and_jinja_priority(tokenizer_json, tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "</s>", "chat_template": "CONFIG{% for m in messages %}{{ m.content }}{% endfor %}"}))
    conv = [{"messages": [{"role": "user", "content": "x"}]}]
    assert run_ours(d, conv, tmp_path)[0]["text"] == "CONFIGx"
    (d / "chat_template.jinja").write_text("FILE{{ messages[0].content }}{{ eos_token }}\n")
    assert run_ours(d, conv, tmp_path)[0]["text"] == "FILEx</s>"
    assert AutoTokenizer.from_pretrained(str(d)).apply_chat_template(conv[0]["messages"], tokenize=False) == "FILEx</s>"


def trained_runs(tok, ids, mask):
    """The trained tokens as decoded text, one string per contiguous run."""
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


# A ChatML template with {% generation %} blocks, as TRL's training templates mark assistant turns.
CHATML_GENERATION = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

GENERATION_TEMPLATES = {"chatml-generation": CHATML_GENERATION,
                        **{n: TEMPLATES[n].read_text(encoding="utf-8") for n in TEMPLATES
                           if "{% generation" in TEMPLATES[n].read_text(encoding="utf-8")
                           or "{%- generation" in TEMPLATES[n].read_text(encoding="utf-8")}}


@pytest.mark.parametrize("name", sorted(GENERATION_TEMPLATES))
def test_generation_ids_and_masks_match_transformers(name, tokenizer_json, tmp_path):
    model = model_dir(tmp_path, name, GENERATION_TEMPLATES[name], tokenizer_json)
    tok = AutoTokenizer.from_pretrained(str(model))
    convs = {k: v for k, v in CONVERSATIONS.items() if any(m["role"] == "assistant" for m in v["messages"])}
    checked = 0
    for kwargs in KWARGS[:3]:
        ours = run_ours(model, list(convs.values()), tmp_path, kwargs=kwargs, ids=True)
        for (cname, conv), o in zip(convs.items(), ours):
            try:
                theirs = tok.apply_chat_template(conv["messages"], tools=conv.get("tools"),
                                                 documents=conv.get("documents"), tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True, **kwargs)
            except Exception as e:  # noqa: BLE001
                assert "error" in o, (cname, e)
                continue
            assert o.get("input_ids") == list(theirs["input_ids"]), (cname, o)
            assert o["assistant_masks"] == list(theirs["assistant_masks"]), (
                cname, trained_runs(tok, o["input_ids"], o["assistant_masks"]),
                trained_runs(tok, theirs["input_ids"], theirs["assistant_masks"]))
            assert o["labels"] == [i if m else -100 for i, m in zip(o["input_ids"], o["assistant_masks"])]
            checked += 1
    assert checked >= 6


# Prefix-derived masks (templates without {% generation %}): what each assistant turn trains.
EXPECTED_RUNS = {
    ("Qwen-Qwen2.5-7B-Instruct", "multi_turn"): ["Hello! How can I help?<|im_end|>", "Blue.<|im_end|>"],
    ("meta-llama-Llama-3.1-8B-Instruct", "system_user_assistant"): ["4.<|eot_id|>"],
    ("mistralai-Mixtral-8x7B-Instruct-v0.1", "multi_turn"): [" Hello! How can I help?</s>", " Blue.</s>"],
    ("google-gemma-2-2b-it", "multi_turn"): ["Hello! How can I help?<end_of_turn>", "Blue.<end_of_turn>"],
    # Phi appends eos_token after the conversation: it is trained with the last turn.
    ("microsoft-Phi-3.5-mini-instruct", "system_user_assistant"): ["4.<|end|>\n<|endoftext|>"],
    ("deepseek-ai-DeepSeek-V3.1", "multi_turn"): ["Hello! How can I help?<｜end▁of▁sentence｜>",
                                                  "Blue.<｜end▁of▁sentence｜>"],
    # Qwen3 renders earlier turns without their reasoning, the last with it.
    ("Qwen-Qwen3-0.6B", "reasoning_field"): ["Yes.<|im_end|>",
                                             "<think>\n3 * 7 = 21.\n</think>\n\nNo, 21 = 3 x 7.<|im_end|>"],
    ("Qwen-Qwen3-0.6B", "tool_calls"): [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "<think>\n\n</think>\n\nIt is 21°C and clear in Paris.<|im_end|>"],
    # harmony: the last turn ends in <|return|>; earlier final turns end in <|end|>, which the
    # last-turn rendering does not have, so it is not trained.
    ("openai-gpt-oss-120b", "multi_turn"): ["<|channel|>final<|message|>Hello! How can I help?",
                                            "<|channel|>final<|message|>Blue.<|return|>"],
}


@pytest.mark.parametrize("name,conversation", sorted(EXPECTED_RUNS))
def test_prefix_derived_masks(name, conversation, tokenizer_json, tmp_path):
    model = model_dir(tmp_path, name, TEMPLATES[name].read_text(encoding="utf-8"), tokenizer_json)
    tok = AutoTokenizer.from_pretrained(str(model))
    conv = CONVERSATIONS[conversation]
    (o,) = run_ours(model, [conv], tmp_path, ids=True)
    assert "error" not in o, o
    assert o["text"] == run_theirs(tok, conv)["text"]
    assert o["input_ids"] == tok.apply_chat_template(conv["messages"], tools=conv.get("tools"), tokenize=True,
                                                     return_dict=False)
    assert trained_runs(tok, o["input_ids"], o["assistant_masks"]) == EXPECTED_RUNS[(name, conversation)]


@pytest.mark.parametrize("name", sorted(n for n in TEMPLATES if n not in GENERATION_TEMPLATES))
def test_prefix_masks_cover_assistant_text_only(name, tokenizer_json, tmp_path):
    """Every template without generation blocks: trained text holds every assistant reply and
    no system or user text."""
    model = model_dir(tmp_path, name, TEMPLATES[name].read_text(encoding="utf-8"), tokenizer_json)
    tok = AutoTokenizer.from_pretrained(str(model))
    names = ["system_user_assistant", "multi_turn", "tool_calls", "unicode_whitespace"]
    ours = run_ours(model, [CONVERSATIONS[n] for n in names], tmp_path, ids=True)
    checked = 0
    for cname, o in zip(names, ours):
        if "error" in o:
            assert "error" in run_theirs(tok, CONVERSATIONS[cname]), (cname, o["error"])
            continue
        trained = "".join(trained_runs(tok, o["input_ids"], o["assistant_masks"]))
        for m in CONVERSATIONS[cname]["messages"]:
            text = (m.get("content") or "").strip()
            if not text:
                continue
            if m["role"] == "assistant" and text in o["text"]:
                assert text in trained, (cname, text, trained)
            elif m["role"] in ("user", "system"):
                assert text not in trained, (cname, text, trained)
        checked += 1
    # Command R+'s tool_use template rejects tool schemas without parameter descriptions (in
    # transformers too): nothing of it is checked here.
    assert checked >= 1 or name.startswith("CohereForAI")


def test_errors_name_the_template_line(tokenizer_json, tmp_path):
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    # A syntax error: the command fails before rendering anything, naming line and column.
    bad = model_dir(tmp_path, "bad", "{% for m in messages %}\n{{ m.content | trim }\n{% endfor %}", tokenizer_json)
    inp = tmp_path / "c.jsonl"
    inp.write_text(json.dumps(conv) + "\n")
    res = subprocess.run([str(BINARY), "chat-template", "--tokenizer", str(bad), "--input", str(inp), "--out",
                          str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "chat template line 2, column" in res.stderr and "syntax error" in res.stderr, res.stderr
    with pytest.raises(Exception):
        AutoTokenizer.from_pretrained(str(bad)).apply_chat_template(conv["messages"], tokenize=False)
    # raise_exception: the template's own message, with its line, per conversation.
    strict = model_dir(tmp_path, "strict", TEMPLATES["mistralai-Mixtral-8x7B-Instruct-v0.1"].read_text(), tokenizer_json)
    tool = {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}
    ours = run_ours(strict, [conv, tool], tmp_path)
    assert "text" in ours[0]
    assert "line 22, column" in ours[1]["error"] and "Only user and assistant roles are supported" in ours[1]["error"]
    # A bad line is named with its number when not keeping going.
    inp.write_text(json.dumps(conv) + "\n" + json.dumps(tool) + "\n")
    res = subprocess.run([str(BINARY), "chat-template", "--tokenizer", str(strict), "--input", str(inp), "--out",
                          str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert res.returncode == 1 and "c.jsonl:2: chat template line 22" in res.stderr, res.stderr
