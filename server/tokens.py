"""The tokenizer over HTTP: ``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info``
(vLLM's routes and field names, which lm-eval-harness's remote tokenizer reads).

``/tokenize`` takes a text (``prompt``) or chat ``messages`` and answers the ids
(``tokens``), their ``count``, each token's printable ``pieces`` and own ``bytes``
(``generator.tokens``: a piece of a character is ``\\xNN``, never U+FFFD) and its
``[start, end)`` byte ``offsets`` in the concatenation of those bytes (the text's own
UTF-8 when the tokenizer added nothing to it).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from decoding import ParamError

from .errors import APIError
from .intake import Intake, check_text
from .openai.protocol import ChatMessage

router = APIRouter()  # the API key: server/guards.py


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = True  # for a prompt: the tokenizer's own (BOS, ...); chat adds the template's
    add_generation_prompt: bool = True  # chat: always added (as a chat completion sends it)


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]


@router.post("/tokenize")
async def tokenize(req: TokenizeRequest, request: Request):
    """Text or chat messages -> ids, pieces, bytes, byte offsets, count."""
    intake = Intake.ready(request)
    intake.check_model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "send exactly one of prompt (a text) and messages (a chat)", param="prompt",
                       code="invalid_value")
    engine = intake.engine
    if req.messages is not None:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        ids = await _encode(engine, messages, chat=True, field="messages",
                            special=intake.settings.special_tokens_in_messages)
    else:
        ids = await _encode(engine, req.prompt, chat=False, field="prompt", special=req.add_special_tokens)
    from generator.tokens import token_table

    table = token_table(engine.tokenizer)
    return {"model": intake.settings.model_name, "count": len(ids), "max_model_len": intake.context,
            "tokens": ids, "pieces": [table.piece(t) for t in ids], "bytes": [list(table.bytes(t)) for t in ids],
            "offsets": [list(span) for span in table.spans(ids)]}


async def _encode(engine, prompt, chat: bool, field: str, special: bool) -> list[int]:
    """Ids of a text or messages, in a thread (megabytes take seconds); 400 naming ``field``."""
    check_text(prompt, field)

    def encode():
        if chat:
            return engine.encode(prompt, chat=True, special_tokens=special)
        return list(engine.tokenizer(prompt, add_special_tokens=special)["input_ids"])

    try:
        return await run_in_threadpool(encode)
    except ParamError as exc:
        raise APIError(400, f"{field}: {exc.message}", param=field, code="invalid_value") from None


@router.post("/detokenize")
async def detokenize(req: DetokenizeRequest, request: Request):
    """Ids -> the text they decode to (special tokens kept)."""
    intake = Intake.ready(request)
    intake.check_model(req.model)
    vocab = intake.engine.model.config.vocab_size
    bad = [t for t in req.tokens if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"tokens: token id {bad[0]} is outside the vocabulary [0, {vocab})", param="tokens",
                       code="invalid_value")
    text = intake.engine.tokenizer.decode(req.tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return {"model": intake.settings.model_name, "prompt": text, "count": len(req.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request):
    """The tokenizer's special tokens, chat template and sizes."""
    intake = Intake.ready(request)
    tok = intake.engine.tokenizer
    template = getattr(tok, "chat_template", None)
    return {"model": intake.settings.model_name, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
            "pad_token": tok.pad_token, "unk_token": getattr(tok, "unk_token", None),
            "chat_template": template if isinstance(template, str) else None,
            "vocab_size": intake.engine.model.config.vocab_size, "max_model_len": intake.context}
