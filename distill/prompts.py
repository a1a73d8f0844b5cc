"""The teacher's prompt for a classification task, split into a shared prefix and a suffix.

Everything before the input text (instruction, label list, few-shot examples) is the same for
every input, so a local teacher computes it once and reuses its KV cache. With a chat model the
examples are earlier user/assistant turns; the answer is the label name, alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.config import ClassificationTask

SENTINEL = "\u2063INPUT\u2063"  # invisible separators: cannot collide with real text


@dataclass(frozen=True)
class SplitPrompt:
    """prefix + input text + suffix is the whole prompt; the answer follows the suffix."""

    prefix: str
    suffix: str
    answer_lead: str  # text before the label in the answer ("" for chat, " " for plain)

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
        prefix, _, suffix = rendered.partition(SENTINEL)
        return SplitPrompt(prefix=prefix, suffix=suffix, answer_lead="")
    shots = "".join(f"Message: {e.text}\nLabel: {e.label}\n\n" for e in task.examples)
    return SplitPrompt(
        prefix=system_text(task) + "\n\n" + shots + "Message: ",
        suffix="\nLabel:",
        answer_lead=" ",
    )
