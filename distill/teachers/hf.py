"""A local transformers causal LM as the teacher: label options scored in one forward pass.

The prompt's shared prefix (instruction, label list, examples) is run once per task and its KV
cache reused for every input. Each input then costs one forward pass over its own tokens plus a
few "tree" tokens: the label names form a token trie, and where labels share a beginning
(`card_lost`, `card_declined`) the branching tokens ride along in the same pass under a tree
attention mask. The result is the model's exact probability over the closed label set
(decoding constrained to the labels), with no generation and no parsing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from distill.config import ClassificationTask, HFTeacherConfig
from distill.data import Record
from distill.errors import ConfigError
from distill.prompts import SplitPrompt, classification_prompt, generation_prompt_text
from distill.teachers import prefix_attention
from distill.teachers.base import TeacherAnswer
from training.bases import model_identity, resolve_model, use_safetensors

METHOD = "option-trie-v2"  # bump when the scoring changes: it is part of every cache key
GENERATE_METHOD = "greedy-v1"  # the same, for generation and extraction tasks


@dataclass(frozen=True)
class LabelTrie:
    """The label names as token sequences, and the trie nodes where the model must choose."""

    tree_tokens: np.ndarray  # (T,) token of each non-root node that leads to a choice
    ancestors: np.ndarray  # (T, T) bool: [t, u] is True when node u is t or above it
    depths: np.ndarray  # (T,) depth of each tree node (1 = first answer token)
    choices: list[tuple[int, list[int]]]  # (tree node index or -1 for root, child token ids)
    label_steps: list[list[tuple[int, int]]]  # per label: (choice index, child position)


def build_label_trie(sequences: list[list[int]]) -> LabelTrie:
    """Trie over label token sequences (each ending in an end token, so none is a prefix)."""
    if len({tuple(s) for s in sequences}) != len(sequences):
        raise ConfigError("two labels of the task tokenize to the same sequence for the teacher")
    children: dict[tuple[int, ...], list[int]] = {}
    for seq in sequences:
        for k in range(len(seq)):
            kids = children.setdefault(tuple(seq[:k]), [])
            if seq[k] not in kids:
                kids.append(seq[k])
    decision_paths = [path for path, kids in children.items() if len(kids) > 1]
    needed = {path[:k] for path in decision_paths for k in range(1, len(path) + 1)}
    ordered = sorted(needed, key=lambda p: (len(p), p))
    index = {path: i for i, path in enumerate(ordered)}
    ancestors = np.zeros((len(ordered), len(ordered)), dtype=bool)
    for path, i in index.items():
        for k in range(1, len(path) + 1):
            ancestors[i, index[path[:k]]] = True
    choice_of: dict[tuple[int, ...], int] = {}
    choices: list[tuple[int, list[int]]] = []
    for path in sorted(decision_paths, key=lambda p: (len(p), p)):
        choice_of[path] = len(choices)
        choices.append((index[path] if path else -1, children[path]))
    label_steps = []
    for seq in sequences:
        steps = []
        for k in range(len(seq)):
            path = tuple(seq[:k])
            if path in choice_of:
                steps.append((choice_of[path], children[path].index(seq[k])))
        label_steps.append(steps)
    return LabelTrie(
        tree_tokens=np.array([p[-1] for p in ordered], dtype=np.int64),
        ancestors=ancestors,
        depths=np.array([len(p) for p in ordered], dtype=np.int64),
        choices=choices,
        label_steps=label_steps,
    )


def label_sequences(tokenizer, prompt: SplitPrompt, names: list[str]) -> list[list[int]]:
    """Each label as the teacher would write it: lead, name, then the first token of the end
    of turn, so that a label that is a prefix of another is still a distinct answer."""
    end_ids = tokenizer(prompt.answer_end, add_special_tokens=False).input_ids
    end_piece = tokenizer.decode(end_ids[:1]) if end_ids else ""
    sequences = []
    for name in names:
        ids = tokenizer(prompt.answer_lead + name + end_piece, add_special_tokens=False).input_ids
        if not end_piece and tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        sequences.append(ids)
    for i, a in enumerate(sequences):
        for j, b in enumerate(sequences):
            if i != j and b[: len(a)] == a:
                raise ConfigError(
                    f"label {names[i]!r} is a token prefix of {names[j]!r} and the teacher's "
                    "tokenizer marks no end of answer; rename one of them"
                )
    return sequences


@dataclass
class _TaskState:
    prompt: SplitPrompt
    prefix_ids: list[int]
    suffix_ids: list[int]
    prefix_kv: list | None
    trie: LabelTrie
    sequences: list[list[int]]  # each label's answer tokens, end of turn included


def _final_logits(config, logits, head, kids):
    """What the model's own head would add after the matmul: bias and logit scaling."""
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[kids].float()
    if getattr(config, "logit_scale", None):  # Cohere
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        logits = logits / config.logits_scaling
    if getattr(config, "final_logit_softcapping", None):  # Gemma 2
        cap = config.final_logit_softcapping
        logits = cap * torch.tanh(logits / cap)
    return logits


class HFTeacher:
    """Classification by scoring the label options with a local causal LM."""

    cacheable = True

    def __init__(self, config: HFTeacherConfig, log=print) -> None:
        self.config = config
        self.batch_size = config.batch_size
        self.log = log
        self._tokenizer = None
        self._lm = None
        self._path: str | None = None
        self._tasks: dict[str, _TaskState] = {}
        self._prompts: dict[str, SplitPrompt] = {}
        self.identity = f"hf:{model_identity(config.model)}"

    # ── loading ──
    def _model_path(self) -> str:
        if self._path is None:
            self._path = resolve_model(self.config.model, log=self.log)
        return self._path

    def _no_shipped_code(self, exc: ValueError) -> ConfigError:
        """transformers' refusal of a model that ships code, as a config error."""
        if "trust_remote_code" not in str(exc):
            raise exc
        return ConfigError(
            f"teacher.model: {self.config.model} ships its own code, which runs only with "
            "teacher.trust_remote_code: true (set it only if you trust that code)"
        )

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    self._model_path(), trust_remote_code=self.config.trust_remote_code
                )
            except ValueError as exc:
                raise self._no_shipped_code(exc) from None
        return self._tokenizer

    @property
    def lm(self):
        if self._lm is None:
            from transformers import AutoModelForCausalLM

            try:
                self._lm = AutoModelForCausalLM.from_pretrained(
                    self._model_path(),
                    dtype=getattr(torch, self.config.dtype),
                    trust_remote_code=self.config.trust_remote_code,
                    use_safetensors=use_safetensors(self.config.allow_pickle),
                ).eval()
            except ValueError as exc:
                raise self._no_shipped_code(exc) from None
            if torch.cuda.is_available():
                self._lm.to("cuda")
            self._lm.set_attn_implementation(prefix_attention.NAME)
        return self._lm

    def _prompt(self, task: ClassificationTask) -> SplitPrompt:
        """The task's prompt, rendered once (cache_key asks for it for every input)."""
        key = task.model_dump_json()  # by content: a changed task is a different prompt
        if key not in self._prompts:
            tok = self.tokenizer
            self._prompts[key] = classification_prompt(
                task, chat_template=bool(tok.chat_template), tokenizer=tok
            )
        return self._prompts[key]

    def _task_state(self, task: ClassificationTask) -> _TaskState:
        key = task.model_dump_json()
        if key in self._tasks:
            return self._tasks[key]
        tok = self.tokenizer
        prompt = self._prompt(task)
        sequences = label_sequences(tok, prompt, task.label_names)
        state = _TaskState(
            prompt=prompt,
            prefix_ids=tok(prompt.prefix, add_special_tokens=False).input_ids,
            suffix_ids=tok(prompt.suffix, add_special_tokens=False).input_ids,
            prefix_kv=None,
            trie=build_label_trie(sequences),
            sequences=sequences,
        )
        self._tasks[key] = state
        return state

    # ── the interface ──
    def cache_key(self, task: ClassificationTask, record: Record) -> str:
        if task.kind != "classification":
            return self._generation_key(task, record)
        prompt = self._prompt(task)
        blob = json.dumps(
            {
                "teacher": self.identity,
                "method": METHOD,
                "dtype": self.config.dtype,
                "max_input_tokens": self.config.max_input_tokens,
                "labels": task.label_names,
                "prompt": prompt.render(record.text),
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def label_batch(self, task: ClassificationTask, records: list[Record]) -> list[TeacherAnswer]:
        if task.kind != "classification":
            return self._generate_batch(task, records)
        state = self._task_state(task)
        started = time.perf_counter()
        with torch.inference_mode():
            if state.prefix_kv is None:
                state.prefix_kv = self._prefix_kv(state.prefix_ids)
            rows = []
            for record in records:
                ids = self.tokenizer(record.text, add_special_tokens=False).input_ids
                rows.append(ids[: self.config.max_input_tokens] + state.suffix_ids)
            log_probs = self._score_rows(state, rows)  # (batch, n_labels)
        probs = np.exp(log_probs)
        elapsed = (time.perf_counter() - started) / max(1, len(records))
        answers = []
        for row, p in zip(rows, probs, strict=True):
            best = int(np.argmax(p))
            answers.append(
                TeacherAnswer(
                    label=task.label_names[best],
                    probs={name: float(v) for name, v in zip(task.label_names, p, strict=True)},
                    input_tokens=len(state.prefix_ids) + len(row),
                    output_tokens=len(state.sequences[best]),
                    latency_s=elapsed,
                )
            )
        return answers

    # ── generation and extraction: batched greedy decoding ──
    def _generation_prompt(self, task, record: Record) -> str:
        ids = self.tokenizer(record.text, add_special_tokens=False).input_ids
        # the student sees at most task.max_input_tokens: the teacher answers the same text
        limit = min(self.config.max_input_tokens, task.max_input_tokens)
        text = self.tokenizer.decode(ids[:limit])
        return generation_prompt_text(task, text, self.tokenizer)

    def _generation_key(self, task, record: Record) -> str:
        blob = json.dumps(
            {
                "teacher": self.identity,
                "method": GENERATE_METHOD,
                "dtype": self.config.dtype,
                "max_new_tokens": task.max_new_tokens,
                "prompt": self._generation_prompt(task, record),
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _generate_batch(self, task, records: list[Record]) -> list[TeacherAnswer]:
        """Greedy answers, left-padded in one batch; the answer is stored as generated (the
        label stage canonicalises and validates it)."""
        tok, lm = self.tokenizer, self.lm
        prompts = [tok(self._generation_prompt(task, r), add_special_tokens=False).input_ids
                   for r in records]  # fmt: skip
        ids, mask, pad = _left_padded(prompts, tok)
        width = ids.shape[1]
        started = time.perf_counter()
        lm.set_attn_implementation("sdpa")  # plain causal attention for decoding
        try:
            with torch.inference_mode():
                out = lm.generate(
                    input_ids=ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    max_new_tokens=task.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
        finally:
            lm.set_attn_implementation(prefix_attention.NAME)
        elapsed = (time.perf_counter() - started) / max(1, len(records))
        configured = lm.generation_config.eos_token_id
        configured = configured if isinstance(configured, list) else [configured]
        stops = {tok.eos_token_id, *configured} - {None}
        answers = []
        for row, p in enumerate(prompts):
            tokens = out[row, width:].tolist()
            end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
            text = tok.decode(tokens[:end], skip_special_tokens=True).strip()
            answers.append(
                TeacherAnswer(
                    label=text,
                    input_tokens=len(p),
                    output_tokens=min(end + 1, len(tokens)),
                    latency_s=elapsed,
                )
            )
        return answers

    def complete(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        """One chat reply (for writing synthetic inputs); sampled when temperature > 0."""
        return self.complete_many([messages], max_tokens, temperature)[0]

    def complete_many(
        self, conversations: list[list[dict]], max_tokens: int, temperature: float
    ) -> list[str]:
        """A chat reply to each conversation, left-padded into one `generate` call: decoding
        on a CPU reads every weight once per step, so a batch costs little more than one."""
        tok, lm = self.tokenizer, self.lm
        prompts = [tok(self._chat_text(m), add_special_tokens=False).input_ids
                   for m in conversations]  # fmt: skip
        ids, mask, pad = _left_padded(prompts, tok)
        width = ids.shape[1]
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
        lm.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                out = lm.generate(
                    input_ids=ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    max_new_tokens=max_tokens,
                    pad_token_id=pad,
                    **(sampling if temperature > 0 else {"do_sample": False}),
                )
        finally:
            lm.set_attn_implementation(prefix_attention.NAME)
        return [tok.decode(row[width:], skip_special_tokens=True) for row in out]

    def _chat_text(self, messages: list[dict]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def _score_rows(self, state: _TaskState, rows: list[list[int]]) -> np.ndarray:
        """One forward pass over [input tokens | tree tokens] per row, on the shared prefix."""
        trie = state.trie
        n_prefix = len(state.prefix_ids)
        n_tree = len(trie.tree_tokens)
        batch = len(rows)
        width = max(len(r) for r in rows) + n_tree
        input_ids = torch.zeros((batch, width), dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        mask = torch.zeros((batch, 1, width, width), dtype=torch.bool)  # among the new tokens
        tree_tokens = torch.from_numpy(trie.tree_tokens)
        ancestors = torch.from_numpy(trie.ancestors)
        for b, row in enumerate(rows):
            n = len(row)
            input_ids[b, :n] = torch.tensor(row)
            input_ids[b, n : n + n_tree] = tree_tokens
            positions[b, :n] = torch.arange(n_prefix, n_prefix + n)
            positions[b, n : n + n_tree] = n_prefix + n - 1 + torch.from_numpy(trie.depths)
            mask[b, 0, :n, :n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
            mask[b, 0, n : n + n_tree, :n] = True
            mask[b, 0, n : n + n_tree, n : n + n_tree] = ancestors
        lm = self.lm
        device = lm.device
        hidden = lm.base_model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=False,
            prefix_kv=state.prefix_kv,  # the prompt prefix, shared by every row
        ).last_hidden_state  # (batch, width, hidden)
        head = lm.get_output_embeddings()
        lengths = torch.tensor([len(r) for r in rows], device=device)
        n_labels = len(trie.label_steps)
        choice_logp = []
        for node, kids in trie.choices:
            at = lengths - 1 if node < 0 else lengths + node  # (batch,) position of the node
            h = hidden[torch.arange(batch, device=device), at]  # (batch, hidden)
            weight = head.weight[kids]  # (n_kids, hidden)
            logits = _final_logits(lm.config, h.float() @ weight.float().T, head, kids)
            choice_logp.append(torch.log_softmax(logits, dim=-1).cpu())  # (batch, n_kids)
        out = torch.zeros((batch, n_labels), dtype=torch.float64)
        for j, steps in enumerate(trie.label_steps):
            for choice, child in steps:
                out[:, j] += choice_logp[choice][:, child].double()
        return out.numpy()

    def _prefix_kv(self, prefix_ids: list[int]) -> list:
        """Keys and values of the shared prompt prefix, per layer: (1, kv_heads, prefix, d)."""
        from transformers.cache_utils import DynamicCache

        n = len(prefix_ids)
        device = self.lm.device
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=device))[None, None]
        cache = DynamicCache(config=self.lm.config)
        self.lm.base_model(
            input_ids=torch.tensor([prefix_ids], device=device),
            attention_mask=causal,  # (1, 1, n, n)
            position_ids=torch.arange(n, device=device)[None],
            use_cache=True,
            **{_cache_argument(self.lm.base_model): cache},
        )
        return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_argument(model) -> str:
    """The name a model's forward takes its KV cache by: `cache` in recent transformers 5.x,
    `past_key_values` before (which silently ignores `cache=`, leaving the cache empty)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _left_padded(prompts: list[list[int]], tok) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids padded on the left to one width (for decoding), their mask and the pad id."""
    width = max(map(len, prompts))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask, pad
