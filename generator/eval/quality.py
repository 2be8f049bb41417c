"""Quality checks of a weight format against the float32 reference: greedy token
agreement on fixed prompts, and the log-likelihood of a fixed text (score it with
``likelihood.text_logprobs(engine, LIKELIHOOD_TEXT)``). Used by tests, the quality
benchmark and the quality table in docs/performance.md."""

from __future__ import annotations

from decoding import SamplingParams

# Fixed prompts (chat) for greedy agreement, and a fixed text for log-likelihood.
AGREEMENT_PROMPTS = (
    "Explain streaming",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give three tips for learning a new language.",
    "What is the capital of France?",
    "Describe a cat in two sentences.",
)
LIKELIHOOD_TEXT = (
    "The water cycle describes how water moves through the environment. Heat from the sun "
    "evaporates water from oceans, lakes and rivers. The vapour rises, cools and condenses into "
    "clouds. When the droplets grow heavy enough they fall as rain or snow, which flows back into "
    "rivers and seeps into the ground, and the cycle begins again. Plants also release water "
    "vapour through their leaves, a process called transpiration."
)


def greedy_ids(engine, prompt: str, n: int = 64) -> list[int]:
    """The first ``n`` greedy token ids for a chat prompt (EOS ignored)."""
    params = SamplingParams(max_new_tokens=n, ignore_eos=True)
    return [ev.token_id for ev in engine.stream(prompt, params, chat=True)]


def agreement(ours: list[int], ref: list[int]) -> int:
    """Length of the common prefix: how many tokens match before the first divergence."""
    n = 0
    for a, b in zip(ours, ref):
        if a != b:
            break
        n += 1
    return n
