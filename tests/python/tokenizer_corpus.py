"""Texts for the tokenizer parity tests: several scripts, code, emoji, whitespace runs,
combining sequences (NFC), numbers and every family's special tokens inline."""

SPECIAL_STRINGS = [
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat?<|eot_id|>",
    "<｜begin▁of▁sentence｜>System<｜User｜>你好<｜Assistant｜>您好<｜end▁of▁sentence｜>",
    "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Yo<|return|>",
    "hello   <mask>   world <mask>x<mask>",
    "thinking: <think>\nstep 1</think> done <think>",
    "<|endoftext|>trailing<|endoftext|><|endoftext|>",
    "partial <|im_sta and <|begin_of and <｜User",
]

TEXTS = [
    "",
    "Hello, world! I'm here; you're there. THEY'LL go, it'S fine, we'd've.",
    "The quick brown fox jumps over the lazy dog 1234567890 times (3.14159, 1,000,000).",
    "机器学习是人工智能的一个分支。深度学习模型需要大量的数据。",
    "東京は日本の首都です。ひらがなとカタカナ、そして漢字。",
    "한국어 텍스트와 조합: \u1112\u1161\u11ab 그리고 한.",
    "مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣ وتشكيل: كَتَبَ.",
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "नमस्ते दुनिया, यह हिंदी पाठ है। क़ ख़ ग़ (nukta) १२३४",
    "שלום עולם, ภาษาไทย ก็มี, Ελληνικά κείμενα, Türkçe ğüşiöç.",
    "def square(x):\n    return x ** 2  # comment\n\n\tif x:\n\t\tpass\n",
    "int main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n  return 0;\n}\n",
    '{"key": [1, 2.5, null], "nested": {"a": "b\\n"}}',
    "emoji: 👍🏽 family 👨‍👩‍👧‍👦 flags 🇯🇵🇫🇷 ❤️ 🤖🚀 ☕",
    "spaces:    four, tabs:\t\t two,   \n\n\n  three newlines   ",
    "   leading spaces and trailing   ",
    "windows\r\nline\r\nendings \r\n\r\n",
    " \n \n\t\n",
    "combining: e\u0301 vs é, A\u030a vs Å vs \u212b, o\u0308\u0304, q\u0323\u0307, \u1e9b\u0323",
    "ligatures ﬁ ﬂ and fullwidth ＡＢＣ １２３ and ½ ² ℃",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
    "snake_case_identifier camelCaseIdentifier SCREAMING_CASE __dunder__",
    "=" * 300,
    "ab" * 700,
    "a" + " " * 50 + "b",
    "mixed中文English한국어العربيةРусский123",
    "numbers 1 12 123 1234 12345 123456 and ٤٥٦ and ⅷ",
    "quotes 'single' \"double\" `back` ‘curly’ “curly” «guillemets»",
    "math ∑ᵢ xᵢ² ≤ ∞, ∀x∈ℝ: x≠0 → x⁻¹ ∃",
] + SPECIAL_STRINGS

TRAINING_TEXTS = TEXTS * 3 + [
    "Machine learning models learn patterns from data. " * 5,
    "数据 模型 训练 推理 专家 混合 " * 5,
    "الذكاء الاصطناعي والتعلم العميق " * 5,
    "обучение модели на данных " * 5,
    "यंत्र अधिगम और गहन अधिगम " * 5,
    "for i in range(10):\n    print(i)\n" * 5,
]
