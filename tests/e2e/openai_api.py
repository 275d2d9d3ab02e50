"""The OpenAI API of `hearth serve` through the official `openai` client, with SmolLM2:
models list; chat and completions, streamed and not (same text for the same seed, greedy and
sampled); include_usage; max_completion_tokens; n=2; logprobs shape; stop strings; prefix
caching reported as cached_tokens; the server is idle afterwards.

usage: openai_api.py BASE_URL
"""

import math
import time

from common import MODEL, check, check_eq, main, metric, metrics, openai_client, step, wait_until_idle, words

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
COUNT = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
STORY = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def collect_chat_stream(stream):
    """Concatenated content per choice index, finish reasons, the usage chunk and chunk count."""
    texts, finishes, usage, num_chunks, logprobs = {}, {}, None, 0, {}
    for chunk in stream:
        num_chunks += 1
        check_eq(chunk.object, "chat.completion.chunk", "stream chunk object")
        check_eq(chunk.model, MODEL, "stream chunk model")
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts.setdefault(choice.index, "")
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                logprobs.setdefault(choice.index, []).extend(choice.logprobs.content)
            if choice.finish_reason is not None:
                check(choice.index not in finishes, f"choice {choice.index} finished twice")
                finishes[choice.index] = choice.finish_reason
    return texts, finishes, usage, num_chunks, logprobs


def collect_completion_stream(stream):
    texts, finishes, usage = {}, {}, None
    for chunk in stream:
        check_eq(chunk.object, "text_completion", "completion stream chunk object")
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.text or "")
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    return texts, finishes, usage


def check_usage(usage, what):
    check(usage is not None, f"{what}: no usage")
    check(usage.prompt_tokens > 0, f"{what}: prompt_tokens {usage.prompt_tokens}")
    check(usage.completion_tokens > 0, f"{what}: completion_tokens {usage.completion_tokens}")
    check_eq(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, f"{what}: total_tokens")


def cached_tokens(usage):
    details = usage.prompt_tokens_details
    return 0 if details is None or details.cached_tokens is None else details.cached_tokens


def models(client):
    step("GET /v1/models lists the served model")
    names = [model.id for model in client.models.list().data]
    check(MODEL in names, f"/v1/models lists {names}, not {MODEL}")


def chat_greedy(client):
    step("chat, greedy: names Paris; the stream carries the same text, role first, usage last")
    reply = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=40)
    check_eq(reply.object, "chat.completion", "object")
    check_eq(reply.model, MODEL, "model")
    check(reply.id, "empty id")
    check_eq(len(reply.choices), 1, "number of choices")
    choice = reply.choices[0]
    check_eq(choice.message.role, "assistant", "role")
    check("Paris" in (choice.message.content or ""), f"greedy answer {choice.message.content!r} does not name Paris")
    check_eq(choice.finish_reason, "stop", "finish_reason of a short greedy answer")
    check_usage(reply.usage, "chat usage")

    stream = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=40, stream=True,
        stream_options={"include_usage": True})
    first = next(iter(stream))
    check_eq(first.choices[0].delta.role if first.choices else None, "assistant", "first chunk's delta role")
    texts, finishes, usage, num_chunks, _ = collect_chat_stream(stream)
    texts[0] = (first.choices[0].delta.content or "") + texts.get(0, "")
    check_eq(texts[0], choice.message.content, "streamed greedy text vs non-streamed")
    check_eq(finishes.get(0), "stop", "streamed finish_reason")
    check(num_chunks >= 2, f"a {reply.usage.completion_tokens}-token answer came in {num_chunks + 1} chunks")
    check_usage(usage, "streamed include_usage")
    check_eq(usage.completion_tokens, reply.usage.completion_tokens, "streamed completion_tokens")
    check_eq(usage.prompt_tokens, reply.usage.prompt_tokens, "streamed prompt_tokens")

    stream = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=40, stream=True)
    _, _, usage, _, _ = collect_chat_stream(stream)
    check(usage is None, "a stream without stream_options.include_usage carried usage")


def chat_sampled_is_reproducible(client):
    step("chat, temperature 0.9 with a seed: streamed = non-streamed = repeated; other seeds differ")
    params = dict(model=MODEL, messages=STORY, temperature=0.9, top_p=0.95, max_tokens=48)
    reply = client.chat.completions.create(seed=1234, **params)
    text = reply.choices[0].message.content
    check(text, "empty sampled answer")
    again = client.chat.completions.create(seed=1234, **params).choices[0].message.content
    check_eq(again, text, "same seed, second non-streamed answer")
    texts, finishes, _, _, _ = collect_chat_stream(client.chat.completions.create(seed=1234, stream=True, **params))
    check_eq(texts.get(0), text, "same seed, streamed answer vs non-streamed")
    check_eq(finishes.get(0), reply.choices[0].finish_reason, "same seed, streamed finish_reason")
    others = [client.chat.completions.create(seed=seed, **params).choices[0].message.content for seed in (1, 2, 3)]
    check(any(other != text for other in others), "seeds 1, 2, 3 and 1234 all gave the same sampled text")


def chat_max_completion_tokens(client):
    step("chat: max_completion_tokens caps the output (finish_reason length)")
    reply = client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_completion_tokens=5)
    check_eq(reply.usage.completion_tokens, 5, "completion_tokens under max_completion_tokens=5")
    check_eq(reply.choices[0].finish_reason, "length", "finish_reason at max_completion_tokens")


def completions(client):
    step("completions: greedy and seeded, streamed = non-streamed, include_usage")
    for params in (dict(temperature=0), dict(temperature=0.8, seed=99)):
        params.update(model=MODEL, prompt="The old lighthouse keeper opened the door and", max_tokens=24)
        reply = client.completions.create(**params)
        check_eq(reply.object, "text_completion", "object")
        check_eq(reply.model, MODEL, "model")
        check_eq(len(reply.choices), 1, "number of choices")
        text = reply.choices[0].text
        check(text, f"empty completion for {params}")
        check_usage(reply.usage, "completion usage")
        check(reply.choices[0].finish_reason in ("stop", "length"), f"finish_reason {reply.choices[0].finish_reason!r}")
        texts, finishes, usage = collect_completion_stream(client.completions.create(
            stream=True, stream_options={"include_usage": True}, **params))
        check_eq(texts.get(0), text, f"streamed completion vs non-streamed ({params})")
        check_eq(finishes.get(0), reply.choices[0].finish_reason, "streamed completion finish_reason")
        check_usage(usage, "streamed completion include_usage")
        check_eq(usage.completion_tokens, reply.usage.completion_tokens, "streamed completion_tokens")


def n_choices(client):
    step("n=2: two different samples, indices 0 and 1, the same streamed; completions too")
    params = dict(model=MODEL, messages=STORY, temperature=1.0, max_tokens=32, n=2, seed=7)
    reply = client.chat.completions.create(**params)
    check_eq(sorted(c.index for c in reply.choices), [0, 1], "choice indices")
    by_index = {c.index: c.message.content for c in reply.choices}
    check(all(by_index.values()), f"an empty choice: {by_index}")
    check(by_index[0] != by_index[1], f"n=2 gave two identical samples at temperature 1: {by_index[0]!r}")
    check(reply.usage.completion_tokens >= 2, f"completion_tokens {reply.usage.completion_tokens} for two choices")
    texts, finishes, usage, _, _ = collect_chat_stream(client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **params))
    check_eq(texts, by_index, "streamed n=2 texts vs non-streamed")
    check_eq(sorted(finishes), [0, 1], "streamed n=2 finished choices")
    check_eq(usage.completion_tokens, reply.usage.completion_tokens, "streamed n=2 completion_tokens")

    reply = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=1.0, max_tokens=16, n=2, seed=3)
    check_eq(sorted(c.index for c in reply.choices), [0, 1], "completion choice indices")


def check_top(top, k, what):
    check_eq(len(top), k, f"{what}: number of top_logprobs")
    values = [entry.logprob for entry in top]
    check(all(v <= 1e-4 and math.isfinite(v) for v in values), f"{what}: top logprobs {values} not finite and <= 0")
    check(values == sorted(values, reverse=True), f"{what}: top logprobs {values} not descending")


def logprobs(client):
    step("logprobs: one entry per token, top_logprobs=3 descending, greedy token is the top one")
    params = dict(model=MODEL, messages=COUNT, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    reply = client.chat.completions.create(**params)
    choice = reply.choices[0]
    check_eq(choice.finish_reason, "length", "finish_reason (8 tokens of counting)")
    check(choice.logprobs is not None and choice.logprobs.content is not None, "no logprobs.content")
    content = choice.logprobs.content
    check_eq(len(content), reply.usage.completion_tokens, "logprobs entries vs completion_tokens")
    for idx, entry in enumerate(content):
        what = f"token {idx} ({entry.token!r})"
        check(math.isfinite(entry.logprob) and entry.logprob <= 1e-4, f"{what}: logprob {entry.logprob}")
        check(entry.bytes is None or bytes(entry.bytes).decode("utf-8", "replace") == entry.token,
              f"{what}: bytes {entry.bytes} do not spell the token")
        check_top(entry.top_logprobs, 3, what)
        check_eq(entry.top_logprobs[0].token, entry.token, f"{what}: greedy choice vs most likely alternative")
        check(abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-3, f"{what}: logprob differs from its top entry")
    check_eq("".join(e.token for e in content), choice.message.content, "concatenated logprob tokens vs content")

    _, _, _, _, streamed = collect_chat_stream(client.chat.completions.create(stream=True, **params))
    check_eq([e.token for e in streamed.get(0, [])], [e.token for e in content], "streamed logprob tokens")

    reply = client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_tokens=4)
    check(reply.choices[0].logprobs is None, "logprobs returned although not asked for")

    reply = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=6, logprobs=2)
    lp = reply.choices[0].logprobs
    check(lp is not None, "completions: no logprobs")
    num_tokens = reply.usage.completion_tokens if reply.choices[0].finish_reason == "length" else len(lp.tokens)
    check_eq(len(lp.tokens), num_tokens, "completions: logprobs tokens")
    check_eq(len(lp.token_logprobs), len(lp.tokens), "completions: token_logprobs length")
    check_eq(len(lp.top_logprobs), len(lp.tokens), "completions: top_logprobs length")
    check(all(1 <= len(top) <= 2 for top in lp.top_logprobs), f"completions: top_logprobs sizes {lp.top_logprobs}")
    check(lp.text_offset is None or len(lp.text_offset) == len(lp.tokens), "completions: text_offset length")
    check_eq("".join(lp.tokens), reply.choices[0].text, "completions: concatenated tokens vs text")


def stop_strings(client):
    step("stop strings: output ends right before the first stop string, finish_reason stop")
    prompt = "Count from 1 to 40: 1, 2, 3,"
    base = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=40).choices[0].text
    check(len(base) >= 12, f"greedy counting gave only {base!r}")
    stop = base[len(base) // 2: len(base) // 2 + 3]
    want = base[: base.find(stop)]
    check(stop.strip(), f"picked a blank stop string from {base!r}")
    for stream in (False, True):
        params = dict(model=MODEL, prompt=prompt, temperature=0, max_tokens=40, stop=[stop, "never-appears"])
        if stream:
            texts, finishes, _ = collect_completion_stream(client.completions.create(stream=True, **params))
            text, finish = texts.get(0, ""), finishes.get(0)
        else:
            choice = client.completions.create(**params).choices[0]
            text, finish = choice.text, choice.finish_reason
        check_eq(text, want, f"completion with stop {stop!r} (stream={stream}; full text {base!r})")
        check_eq(finish, "stop", f"finish_reason at a stop string (stream={stream})")

    base = client.chat.completions.create(model=MODEL, messages=COUNT, temperature=0, max_tokens=40).choices[0].message.content
    stop = base[len(base) // 2: len(base) // 2 + 2]
    check(stop.strip(), f"picked a blank stop string from {base!r}")
    for stream in (False, True):
        params = dict(model=MODEL, messages=COUNT, temperature=0, max_tokens=40, stop=stop)
        if stream:
            texts, finishes, _, _, _ = collect_chat_stream(client.chat.completions.create(stream=True, **params))
            text, finish = texts.get(0, ""), finishes.get(0)
        else:
            choice = client.chat.completions.create(**params).choices[0]
            text, finish = choice.message.content, choice.finish_reason
        check_eq(text, base[: base.find(stop)], f"chat with stop {stop!r} (stream={stream}; full text {base!r})")
        check_eq(finish, "stop", f"chat finish_reason at a stop string (stream={stream})")


def prefix_cache(client, base_url):
    step("a ~600-token shared system prompt is served from the prefix cache the second time")
    nonce = time.time_ns()  # a prefix no earlier run against this server has sent
    system = f"You are a careful assistant (session {nonce}). Background notes: " + words(540, seed=nonce)
    first = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=4, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "Name one color."}])
    check(first.usage.prompt_tokens >= 600, f"the long prompt has only {first.usage.prompt_tokens} tokens")
    check_eq(cached_tokens(first.usage), 0, "cached_tokens of the first request with a new system prompt")
    second = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=4, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "Name one animal."}])
    cached = cached_tokens(second.usage)
    check(cached > 0, f"second request sharing a {first.usage.prompt_tokens}-token prefix reports cached_tokens {cached}")
    check(cached >= second.usage.prompt_tokens // 2,
          f"only {cached} of {second.usage.prompt_tokens} prompt tokens cached although ~600 are shared")
    check(cached < second.usage.prompt_tokens, f"cached_tokens {cached} >= prompt_tokens {second.usage.prompt_tokens}")

    stream = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": "Name one tree."}])
    _, _, usage, _, _ = collect_chat_stream(stream)
    check(cached_tokens(usage) > 0, f"streamed usage reports cached_tokens {cached_tokens(usage)}")

    prompt = f"Notes {nonce}: " + words(450, seed=nonce + 1)
    client.completions.create(model=MODEL, prompt=prompt + " First", temperature=0, max_tokens=2)
    again = client.completions.create(model=MODEL, prompt=prompt + " Second", temperature=0, max_tokens=2)
    check(cached_tokens(again.usage) > 0, f"completions with a shared prefix report cached_tokens {cached_tokens(again.usage)}")

    rate = metric(metrics(base_url), "hearth_prefix_cache_hit_rate")
    check(0 < rate <= 1, f"hearth_prefix_cache_hit_rate is {rate} after prefix hits")


def run(base_url):
    client = openai_client(base_url)
    models(client)
    chat_greedy(client)
    chat_sampled_is_reproducible(client)
    chat_max_completion_tokens(client)
    completions(client)
    n_choices(client)
    logprobs(client)
    stop_strings(client)
    prefix_cache(client, base_url)
    step("the server is idle afterwards: no KV block used")
    wait_until_idle(base_url, timeout=20)


if __name__ == "__main__":
    main(run)
