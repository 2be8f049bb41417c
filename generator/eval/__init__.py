"""Measuring generations: ``timing`` (the one TTFT / inter-token latency / tokens/s
summary and its percentile), ``text`` (distinct-n, repetition, self-BLEU on token
ids), ``likelihood`` (mean logprob and perplexity from per-token logprobs) and
``quality`` (a weight format against the float32 reference). Nothing here is
imported by the engine; the CLI, the server's stream stats, the benchmarks
and the tests use it."""
