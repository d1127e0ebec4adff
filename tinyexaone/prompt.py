"""The prompt of a conversation: the model's chat template rendered, bounded and tokenized.

`chat_prompt(tokenizer, messages, ...)` -> (text, token ids or None). With `max_tokens`, the
render is bounded to what that context could hold (a template's output past it, or a text too
long in bytes, is a ContextOverflowError before anything is tokenized). Unless
`special_tokens_in_content`, text in the content of system, user and tool messages that spells
a special token (a role marker such as "[|system|]", "[|endofturn|]") is tokenized as the plain
text it is, so a message cannot forge a turn of another role: each such span is carried through
the template as one private-use code point (Supplementary Private Use Area-A, which no template
or vocabulary means) and encoded with `Tokenizer.encode_literal` at the end. The template's own
markers, and assistant messages (the model's own output), are unchanged, and the text returned
is the conversation as rendered, with every such span restored.
"""

from __future__ import annotations

import functools
import re

from .chat_template import render_chat_template

PLACEHOLDER_BASE = 0xF0000
LITERAL_ROLES = ("system", "user", "tool")  # whose content is text from outside the model


@functools.lru_cache(maxsize=8)
def _special_pattern(special_texts: tuple[str, ...]) -> tuple[re.Pattern | None, dict[str, str]]:
    """(a pattern matching any special-token text, longest first; text -> its placeholder)."""
    placeholders = {text: chr(PLACEHOLDER_BASE + i) for i, text in enumerate(special_texts)}
    by_length = sorted(special_texts, key=len, reverse=True)
    return (re.compile("|".join(map(re.escape, by_length))) if by_length else None), placeholders


def chat_prompt(tokenizer, messages, tools=None, add_generation_prompt: bool = True, max_tokens: int | None = None,
                special_tokens_in_content: bool = False, tokenize: bool = True, **kwargs):
    """(prompt text, its token ids, or None unless `tokenize`); see the module docstring."""
    literals = {}
    if not special_tokens_in_content:
        messages, literals = _hide_special_text(tokenizer, messages)
    bound = {} if max_tokens is None else {"max_chars": max_tokens * tokenizer.max_token_bytes}
    text = render_chat_template(tokenizer.template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                special_tokens=tokenizer.special_tokens_map, **bound, **kwargs)
    if max_tokens is not None:
        tokenizer.check_fits(text, max_tokens)
    ids = _encode(tokenizer, text, literals) if tokenize else None
    for placeholder, literal in literals.items():
        text = text.replace(placeholder, literal)
    return text, ids


def _hide_special_text(tokenizer, messages):
    """(messages with special-token text in system/user/tool content replaced by placeholders,
    {placeholder: text} of those used)."""
    pattern, placeholders = _special_pattern(tokenizer.special_texts)
    if pattern is None or not isinstance(messages, (list, tuple)):
        return messages, {}
    used = {}

    def placeholder(match) -> str:
        used[placeholders[match.group()]] = match.group()
        return placeholders[match.group()]

    def hide(text):
        return pattern.sub(placeholder, text) if isinstance(text, str) else text

    out = []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in LITERAL_ROLES:
            content = message.get("content")
            if isinstance(content, list):
                content = [{**part, "text": hide(part["text"])} if isinstance(part, dict) and "text" in part else part
                           for part in content]
            message = {**message, "content": hide(content)}
        out.append(message)
    return out, used


def _encode(tokenizer, text: str, literals: dict[str, str]) -> list[int]:
    """Token ids of the rendered text: placeholders as their literal text, the rest as usual."""
    if not literals:
        return tokenizer.encode(text, add_special_tokens=False)
    ids, position = [], 0
    for match in re.finditer("[" + "".join(literals) + "]", text):
        if match.start() > position:
            ids += tokenizer.encode(text[position : match.start()], add_special_tokens=False)
        ids += tokenizer.encode_literal(literals[match.group()])
        position = match.end()
    if position < len(text):
        ids += tokenizer.encode(text[position:], add_special_tokens=False)
    return ids
