"""The teacher's prompt for a classification task, split into a shared prefix and a suffix.

Everything before the input text (instruction, label list, few-shot examples) is the same for
every input, so a local teacher computes it once and reuses its KV cache. With a chat model the
examples are earlier user/assistant turns; the answer is the label name, alone, followed by the
template's end of turn (plain prompts: a newline).
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.config import ClassificationTask
from distill.errors import ConfigError

SENTINEL = "\u2063INPUT\u2063"  # invisible separators: cannot collide with real text
ANSWER = "\u2063ANSWER\u2063"


@dataclass(frozen=True)
class SplitPrompt:
    """prefix + input text + suffix is the whole prompt; the answer follows the suffix."""

    prefix: str
    suffix: str
    answer_lead: str  # text before the label in the answer ("" for chat, " " for plain)
    answer_end: str  # text after the label: the end of the assistant's turn

    def render(self, text: str) -> str:
        return self.prefix + text + self.suffix


def system_text(task: ClassificationTask) -> str:
    lines = [task.instruction.strip(), "", "Labels:"]
    for label in task.labels:
        lines.append(
            f"- {label.name}: {label.description}" if label.description else f"- {label.name}"
        )
    lines += ["", "Reply with exactly one label from the list, and nothing else."]
    return "\n".join(lines)


def classification_prompt(
    task: ClassificationTask, chat_template: bool, tokenizer=None
) -> SplitPrompt:
    """The prompt around an input; uses the tokenizer's chat template when there is one."""
    if chat_template and tokenizer is not None:
        messages = [{"role": "system", "content": system_text(task)}]
        for example in task.examples:
            messages.append({"role": "user", "content": example.text})
            messages.append({"role": "assistant", "content": example.label})
        messages.append({"role": "user", "content": SENTINEL})
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        answered = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": ANSWER}], tokenize=False
        )
        if rendered.count(SENTINEL) != 1 or answered.count(ANSWER) != 1:
            raise ConfigError(
                "the teacher's chat template does not keep the input and the answer in place; "
                "use a model with a standard chat template"
            )
        prefix, _, suffix = rendered.partition(SENTINEL)
        return SplitPrompt(
            prefix=prefix,
            suffix=suffix,
            answer_lead="",
            answer_end=answered.partition(ANSWER)[2],
        )
    shots = "".join(f"Message:\n{e.text}\nLabel: {e.label}\n\n" for e in task.examples)
    return SplitPrompt(
        prefix=system_text(task) + "\n\n" + shots + "Message:\n",
        suffix="\nLabel:",
        answer_lead=" ",
        answer_end="\n",
    )


def generation_system_text(task) -> str:
    """The teacher's system turn for a generation or extraction task."""
    text = task.instruction.strip()
    if task.kind == "extraction":
        import json

        from distill.outputs import load_schema

        schema = json.dumps(load_schema(task.json_schema), ensure_ascii=False)
        text += (
            "\n\nAnswer with one JSON value and nothing else (no code fence, no comments). "
            f"It must follow this JSON Schema:\n{schema}"
        )
    return text


def generation_messages(task, text: str) -> list[dict[str, str]]:
    """Chat messages asking the teacher for `text`'s answer, few-shot examples first."""
    import json

    messages = [{"role": "system", "content": generation_system_text(task)}]
    for example in task.examples:
        output = example.output
        if not isinstance(output, str):
            output = json.dumps(output, ensure_ascii=False)
        messages.append({"role": "user", "content": example.text})
        messages.append({"role": "assistant", "content": output})
    messages.append({"role": "user", "content": text})
    return messages


def generation_prompt_text(task, text: str, tokenizer) -> str:
    """The whole prompt as text: the chat template, or a plain layout without one."""
    messages = generation_messages(task, text)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [messages[0]["content"], ""]
    for message in messages[1:]:
        lines.append(("Input: " if message["role"] == "user" else "Output: ") + message["content"])
    return "\n".join(lines) + "\nOutput:"
