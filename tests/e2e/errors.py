"""Invalid requests to `hearth serve` get OpenAI-style errors (curl, raw bytes on the wire):
malformed JSON 400, unknown model 404, wrong field type 400, out-of-range sampling values 400,
prompt + max_tokens over the context 400, empty messages 400, a body over --max-body-bytes 413;
streamed requests fail the same way before any event is sent; the server keeps serving.

usage: errors.py BASE_URL MAX_BODY_BYTES   (the server runs with --max-body-bytes MAX_BODY_BYTES)
"""

import json

from common import MODEL, check, check_eq, check_openai_error, curl, main, mentions, step, wait_until_idle

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hello"}]


def chat(**fields):
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4, **fields}


def context_length(base_url):
    response = curl(base_url, "POST", "/api/show", {"model": MODEL})
    if response.status == 200:
        info = response.json().get("model_info") or {}
        for key, value in info.items():
            if key.endswith("context_length") and isinstance(value, int):
                return value
    return 8192  # SmolLM2-135M's context


def run(base_url, max_body_bytes):
    max_body_bytes = int(max_body_bytes)

    step("malformed JSON: 400")
    for path in (CHAT, COMPLETIONS):
        check_openai_error(curl(base_url, "POST", path, '{"model": "' + MODEL + '", "messages": ['), 400,
                           f"truncated JSON to {path}")
    check_openai_error(curl(base_url, "POST", CHAT, "not json at all"), 400, "non-JSON body")

    step("unknown model: 404 model_not_found")
    for path, body in ((CHAT, chat(model="no-such-model")),
                       (COMPLETIONS, {"model": "no-such-model", "prompt": "Hi", "max_tokens": 4})):
        error = check_openai_error(curl(base_url, "POST", path, body), 404, f"unknown model on {path}")
        check_eq(error["code"], "model_not_found", f"error code for an unknown model on {path}")
        check("no-such-model" in error["message"], f"the message does not name the model: {error['message']!r}")

    step("wrong field types and missing fields: 400 naming the field")
    for body, field in ((chat(max_tokens="ten"), "max_tokens"),
                        (chat(temperature="hot"), "temperature"),
                        (chat(messages="Hello"), "messages"),
                        ({"model": MODEL, "max_tokens": 4}, "messages")):
        error = check_openai_error(curl(base_url, "POST", CHAT, body), 400, f"bad {field} {json.dumps(body)}")
        check(mentions(error, field), f"error for a bad {field} names neither param nor message: {error!r}")
    error = check_openai_error(curl(base_url, "POST", COMPLETIONS, {"model": MODEL, "prompt": 42, "max_tokens": 4}),
                               400, "completions prompt as a number")
    check(mentions(error, "prompt"), f"error for a numeric prompt does not name it: {error!r}")

    step("out-of-range values: 400")
    for field, value in (("temperature", 3.0), ("temperature", -0.5), ("top_p", 1.5), ("top_p", -0.1),
                         ("n", 0), ("max_tokens", 0), ("max_tokens", -5), ("top_logprobs", 50),
                         ("presence_penalty", 5.0), ("frequency_penalty", -3.0)):
        body = chat(**{field: value})
        if field == "top_logprobs":
            body["logprobs"] = True
        error = check_openai_error(curl(base_url, "POST", CHAT, body), 400, f"{field}={value}")
        check(mentions(error, field), f"error for {field}={value} does not name the field: {error!r}")
    check_openai_error(curl(base_url, "POST", CHAT, chat(temperature=3.0, stream=True)), 400,
                       "out-of-range temperature on a streamed request")
    check_openai_error(curl(base_url, "POST", CHAT, chat(messages=[])), 400, "empty messages")
    check_openai_error(curl(base_url, "POST", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}])), 400,
                       "unknown message role")

    step("prompt + max_tokens over the context: 400")
    context = context_length(base_url)
    for path, body in ((CHAT, chat(max_tokens=context)),
                       (COMPLETIONS, {"model": MODEL, "prompt": "Hello there", "max_tokens": context}),
                       (CHAT, chat(max_tokens=context, stream=True))):
        error = check_openai_error(curl(base_url, "POST", path, body), 400,
                                   f"max_tokens={context} (the whole context) plus a prompt on {path}")
        check(error["code"] == "context_length_exceeded" or "context" in error["message"],
              f"the over-context error names no context: {error!r}")
    long_prompt = "word " * (context + 100)
    check_openai_error(curl(base_url, "POST", COMPLETIONS, {"model": MODEL, "prompt": long_prompt, "max_tokens": 1}),
                       400, f"a prompt longer than the {context}-token context")

    step(f"a body over --max-body-bytes {max_body_bytes}: 413")
    big = json.dumps(chat(messages=[{"role": "user", "content": "x" * (max_body_bytes + 1024)}]))
    response = curl(base_url, "POST", CHAT, big)
    check_eq(response.status, 413, f"status for a {len(big)}-byte body ({response!r})")
    if response.body:
        check_openai_error(response, 413, "body too large")
    small = json.dumps(chat(max_tokens=1))
    small += " " * (max_body_bytes - len(small) - 16)  # JSON whitespace: a big body, a short prompt
    response = curl(base_url, "POST", CHAT, small)
    check_eq(response.status, 200, f"status for a {len(small)}-byte body just under the limit ({response!r})")

    step("unknown route: 404")
    check_eq(curl(base_url, "GET", "/v1/no-such-route").status, 404, "status of an unknown route")

    step("the server still answers after all the errors and is idle")
    response = curl(base_url, "POST", CHAT, chat(temperature=0))
    check_eq(response.status, 200, f"a valid request after the errors: {response!r}")
    check(response.json()["choices"][0]["message"]["content"] is not None, f"no content in {response!r}")
    wait_until_idle(base_url, timeout=20)


if __name__ == "__main__":
    main(run)
