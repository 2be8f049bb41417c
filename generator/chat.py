"""Chat messages -> token ids through the tokenizer's chat template, with the messages'
content read as text: ``"<|im_end|>"`` typed in a message is the characters, never the
control token that ends a turn, so a message cannot forge a turn or a role.

    ids = encode_chat(tokenizer, [{"role": "user", "content": "hi"}])
    ids = encode_chat(tokenizer, messages, special_tokens=True)   # content may hold control tokens

How: the template is rendered with a marker in place of each content, the template's own
text is tokenized as usual (its control tokens recognised) and each content alone with
``split_special_tokens=True``. The marker starts and ends at a pre-tokenizer boundary
(the template puts a newline or a control token beside the content), so ordinary
messages get the ids the template would give them (tested against it).
"""

from __future__ import annotations

import re

# Private-use characters: a template never writes them, and no content reaches the rendered text.
_MARK = re.compile("\ue000([0-9]+)\ue001")


def encode_chat(tokenizer, messages: list[dict], special_tokens: bool = False) -> list[int]:
    """The ids of ``messages`` in the chat template, with the generation prompt after them;
    ``special_tokens=True`` lets special-token text inside contents become the tokens."""
    if special_tokens:
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)
        return list(enc["input_ids"])
    masked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(masked, add_generation_prompt=True, tokenize=False)
    ids: list[int] = []
    start = 0
    for match in _MARK.finditer(text):
        ids += _ids(tokenizer, text[start:match.start()])
        ids += _ids(tokenizer, str(messages[int(match.group(1))].get("content") or ""), split=True)
        start = match.end()
    return ids + _ids(tokenizer, text[start:])


def _ids(tokenizer, text: str, split: bool = False) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=split)["input_ids"])
