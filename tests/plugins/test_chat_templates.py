"""The hf tokenizer renders each family's kind of chat template as transformers' apply_chat_template does.

The published templates cannot be downloaded here, and their text is not ours to copy: each template
below is written for this test in the style of one family's, using the constructs that family's
template relies on (read from the published ones): gpt-oss's harmony channels with a reasoning effort
and today's date, Qwen3's thinking switch and reverse search for the last user turn, SmolLM3's
``{% generation %}`` marks and reasoning flags, Llama 3's date string and tool list, Gemma's
alternation check, DeepSeek-V3's namespace-carried system prompt. The reference is transformers'
own ``apply_chat_template`` on the same tokenizer, rendering the same conversation with the same
keyword arguments.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from gptzoo.core import GptzooError  # noqa: E402
from gptzoo.plugins.hf_tokenizer import HFTokenizer, HFTokenizerParams  # noqa: E402

SPECIALS = ["<s>", "</s>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|im_start|>", "<|im_end|>"]

HARMONY = """{#- gpt-oss style: a system header with the date and reasoning effort, channels per message -#}
{%- macro header(effort) -%}
<|start|>system<|message|>You are a helpful assistant.
Current date: {{ strftime_now("%Y-%m-%d") }}

Reasoning: {{ effort }}

# Valid channels: analysis, final.<|end|>
{%- endmacro -%}
{{- header(reasoning_effort | default("medium")) -}}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}{%- if m.role == "user" -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}
{%- for m in messages -%}
  {%- if m.role == "system" -%}<|start|>developer<|message|># Instructions

{{ m.content }}<|end|>
  {%- elif m.role == "user" -%}<|start|>user<|message|>{{ m.content }}<|end|>
  {%- elif m.role == "assistant" -%}
    {%- if m.thinking is defined and loop.index0 > ns.last_user -%}<|start|>assistant<|channel|>analysis<|message|>{{ m.thinking }}<|end|>{%- endif -%}
    <|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>
  {%- else -%}{{- raise_exception("unknown role: " ~ m.role) -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"""

QWEN3 = """{%- if messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
        {%- if loop.index0 > ns.last_query_index and '</think>' in message.content %}
{{- '<|im_start|>assistant\\n<think>\\n' + message.content.split('</think>')[0].split('<think>')[-1].strip('\\n') + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}
        {%- else %}
{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

SMOLLM3 = """{#- SmolLM3 style: reasoning flags in the system turn, assistant turns marked for training -#}
{%- set think = "/no_think" if enable_thinking is defined and not enable_thinking else "/think" -%}
<|im_start|>system
## Metadata

Reasoning Mode: {{ think }}

{% if messages[0].role == "system" %}{{ messages[0].content | replace("/think", "") | replace("/no_think", "") | trim }}{% endif %}
<|im_end|>
{% for message in messages %}{% if message.role == "user" %}<|im_start|>user
{{ message.content }}<|im_end|>
{% elif message.role == "assistant" %}<|im_start|>assistant
{% generation %}{{ message.content }}<|im_end|>
{% endgeneration %}{% endif %}{% endfor %}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% if think == "/no_think" %}<think>

</think>
{% endif %}{%- endif -%}"""

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start|>system<|end|>\\n\\n" }}
{%- if tools is not none and tools is defined %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and tools is defined %}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message }}{{- "</s>" }}
{%- for message in messages %}
    {{- '<|start|>' + message['role'] + '<|end|>\\n\\n'+ message['content'] | trim + '</s>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start|>assistant<|end|>\\n\\n' }}{%- endif %}"""

GEMMA = """{{ bos_token }}
{%- for message in messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<|start|>' + role + '\\n' + message['content'] | trim + '<|end|>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|start|>model\\n' }}{%- endif -%}"""

DEEPSEEK_V3 = """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}
{%- set ns = namespace(is_first=false, system_prompt='') -%}
{%- for message in messages -%}{%- if message['role'] == 'system' -%}
{%- if ns.is_first -%}{%- set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] -%}
{%- else -%}{%- set ns.system_prompt = message['content'] -%}{%- set ns.is_first = true -%}{%- endif -%}
{%- endif -%}{%- endfor -%}
{{ bos_token }}{{ ns.system_prompt }}
{%- for message in messages -%}
{%- if message['role'] == 'user' -%}{{ '<｜User｜>' + message['content'] }}
{%- elif message['role'] == 'assistant' -%}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}
{%- endif -%}
{%- endfor -%}
{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"""

TOOLS_DEFINED = """{#- a template that asks whether tools were passed, as many do: apply_chat_template always passes them -#}
{%- if tools is defined -%}tools: {{ tools | tojson }}{{ '\\n' }}{%- endif -%}
{%- set extra = dict(role="note", content="from dict()") -%}
{%- for m in messages + [extra] -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endfor -%}"""

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n4", "thinking": "Easy."},
    {"role": "user", "content": "And 3 + 3?"},
]
ALTERNATING = [m for m in CONVERSATION if m["role"] != "system"]
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}

CASES = {  # family style -> (template, conversation, the template's own variables)
    "gpt-oss": (HARMONY, CONVERSATION, {"reasoning_effort": "low"}),
    "gpt-oss (default effort)": (HARMONY, CONVERSATION, {}),
    "qwen3": (QWEN3, CONVERSATION, {}),
    "qwen3 (thinking off)": (QWEN3, CONVERSATION, {"enable_thinking": False}),
    "smollm3": (SMOLLM3, CONVERSATION, {}),
    "smollm3 (thinking off)": (SMOLLM3, CONVERSATION, {"enable_thinking": False}),
    "llama3": (LLAMA3, CONVERSATION, {}),
    "llama3 (tools, date)": (LLAMA3, CONVERSATION, {"tools": [TOOL], "date_string": "26 Jul 2024"}),
    "gemma": (GEMMA, ALTERNATING, {}),
    "deepseek-v3": (DEEPSEEK_V3, CONVERSATION, {}),
    "tools defined": (TOOLS_DEFINED, CONVERSATION, {}),
    "tools given": (TOOLS_DEFINED, CONVERSATION, {"tools": [TOOL]}),
}


@pytest.fixture(scope="module")
def backend():
    """A byte-level BPE with the template tokens as special tokens, trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(["What is two plus two? Answer briefly, assistant. " * 20], trainer)
    return tokenizer


def both(backend, template: str):
    """gptzoo's hf tokenizer and transformers' tokenizer, on the same tokenizer.json and template."""
    ours = HFTokenizer(HFTokenizerParams(bos_token="<s>", eos_token="</s>", chat_template=template))
    ours.load_state(json.loads(backend.to_str()))
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", chat_template=template
    )
    return ours, reference


@pytest.mark.parametrize("case", CASES)
def test_each_familys_kind_of_template_renders_as_apply_chat_template(backend, case):
    template, messages, variables = CASES[case]
    ours, reference = both(backend, template)
    for add_generation_prompt in (True, False):
        expected = reference.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **variables
        )
        assert ours.render_chat(messages, add_generation_prompt, **variables) == expected
    ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **variables)
    assert ours.encode_chat(messages, **variables) == list(getattr(ids, "input_ids", ids))


def test_the_template_variables_change_what_is_rendered(backend):
    """The variables reach the template (not a case where both sides ignore them)."""
    ours, _ = both(backend, HARMONY)
    assert "Reasoning: low" in ours.render_chat(CONVERSATION, reasoning_effort="low")
    assert "Reasoning: medium" in ours.render_chat(CONVERSATION)
    ours, _ = both(backend, QWEN3)
    assert ours.render_chat(CONVERSATION, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_generation_marks_render_their_body(backend):
    ours, _ = both(backend, SMOLLM3)
    assert "<|im_start|>assistant\n<think>\nEasy.\n</think>\n\n4<|im_end|>\n" in ours.render_chat(CONVERSATION)


def test_a_variable_gptzoo_sets_itself_is_refused(backend):
    ours, _ = both(backend, QWEN3)
    with pytest.raises(GptzooError, match="template variable 'bos_token' is set by gptzoo itself"):
        ours.render_chat(CONVERSATION, bos_token="<x>")


def test_a_namespace_refuses_underscored_names(backend):
    ours, _ = both(backend, "{% set ns = namespace(__class__=1) %}{{ ns }}")
    with pytest.raises(GptzooError, match="may not hold the underscored name '__class__'"):
        ours.render_chat(CONVERSATION)
