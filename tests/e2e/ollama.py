"""The Ollama API of `hearth serve` (curl, raw bytes): /api/chat and /api/generate, streamed
(NDJSON, Ollama's default) and not, with the same greedy text both ways; options.num_predict;
"name:latest" model names; /api/tags, /api/show, /api/version; unknown models 404.

usage: ollama.py BASE_URL
"""

import json

from common import MODEL, check, check_eq, curl, main, step, wait_until_idle

OPTIONS = {"temperature": 0, "num_predict": 24, "seed": 1}
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def ndjson(response, what):
    check_eq(response.status, 200, f"{what}: status ({response!r})")
    check("ndjson" in response.content_type, f"{what}: content type {response.content_type!r}, not application/x-ndjson")
    lines = [line for line in response.text().split("\n") if line.strip()]
    objects = []
    for idx, line in enumerate(lines):
        try:
            objects.append(json.loads(line))
        except ValueError:
            check(False, f"{what}: line {idx} is not JSON: {line!r}")
    check(len(objects) >= 2, f"{what}: streamed answer came as {len(objects)} line(s): {lines}")
    check(all(obj.get("done") is False for obj in objects[:-1]), f"{what}: done before the last line: {lines[:3]}")
    check(objects[-1].get("done") is True, f"{what}: the last line is not done: {lines[-1]!r}")
    return objects


def check_final(final, what):
    check(str(final.get("model", "")).split(":")[0] == MODEL, f"{what}: model {final.get('model')!r}")
    check(isinstance(final.get("created_at"), str) and final["created_at"], f"{what}: no created_at in {final}")
    check(final.get("done_reason") in ("stop", "length"), f"{what}: done_reason {final.get('done_reason')!r}")
    for key in ("prompt_eval_count", "eval_count", "total_duration", "eval_duration"):
        check(isinstance(final.get(key), int) and final[key] >= 0, f"{what}: {key} is {final.get(key)!r}")
    check(final["prompt_eval_count"] > 0, f"{what}: prompt_eval_count {final['prompt_eval_count']}")
    check(1 <= final["eval_count"] <= OPTIONS["num_predict"], f"{what}: eval_count {final['eval_count']} "
          f"outside 1..num_predict={OPTIONS['num_predict']}")


def chat(base_url):
    step("/api/chat, stream false: an assistant message naming Paris, counts, done")
    response = curl(base_url, "POST", "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False, "options": OPTIONS})
    check_eq(response.status, 200, f"/api/chat status ({response!r})")
    check("json" in response.content_type, f"/api/chat content type {response.content_type!r}")
    reply = response.json()
    check_eq(reply.get("done"), True, "/api/chat done")
    message = reply.get("message") or {}
    check_eq(message.get("role"), "assistant", "/api/chat message role")
    check("Paris" in message.get("content", ""), f"/api/chat answer {message.get('content')!r} does not name Paris")
    check_final(reply, "/api/chat")

    step("/api/chat, streamed by default (NDJSON): the same text, counts on the last line")
    objects = ndjson(curl(base_url, "POST", "/api/chat", {"model": MODEL, "messages": MESSAGES, "options": OPTIONS}),
                     "/api/chat stream")
    text = "".join((obj.get("message") or {}).get("content", "") for obj in objects)
    check_eq(text, message["content"], "/api/chat streamed text vs non-streamed")
    check_final(objects[-1], "/api/chat stream")
    check_eq(objects[-1]["eval_count"], reply["eval_count"], "/api/chat streamed eval_count")

    step("/api/chat accepts the name with a :latest tag")
    response = curl(base_url, "POST", "/api/chat", {"model": f"{MODEL}:latest", "messages": MESSAGES, "stream": False,
                                                    "options": OPTIONS})
    check_eq(response.status, 200, f"/api/chat with {MODEL}:latest ({response!r})")

    step("/api/chat: num_predict caps the output (done_reason length)")
    count = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
    reply = curl(base_url, "POST", "/api/chat", {"model": MODEL, "messages": count, "stream": False,
                                                 "options": {"temperature": 0, "num_predict": 5}}).json()
    check_eq(reply.get("eval_count"), 5, "eval_count with num_predict 5")
    check_eq(reply.get("done_reason"), "length", "done_reason with num_predict 5")


def generate(base_url):
    prompt = "The capital of France is"
    step("/api/generate, stream false and streamed: the same text in `response`")
    response = curl(base_url, "POST", "/api/generate", {"model": MODEL, "prompt": prompt, "stream": False, "options": OPTIONS})
    check_eq(response.status, 200, f"/api/generate status ({response!r})")
    reply = response.json()
    check_eq(reply.get("done"), True, "/api/generate done")
    check(isinstance(reply.get("response"), str) and reply["response"], f"/api/generate response {reply.get('response')!r}")
    check_final(reply, "/api/generate")
    objects = ndjson(curl(base_url, "POST", "/api/generate", {"model": MODEL, "prompt": prompt, "options": OPTIONS}),
                     "/api/generate stream")
    check_eq("".join(obj.get("response", "") for obj in objects), reply["response"], "/api/generate streamed text")
    check_final(objects[-1], "/api/generate stream")

    step("/api/generate with raw true (no template)")
    response = curl(base_url, "POST", "/api/generate", {"model": MODEL, "prompt": prompt, "raw": True, "stream": False,
                                                         "options": OPTIONS})
    check_eq(response.status, 200, f"/api/generate raw ({response!r})")


def metadata(base_url):
    step("/api/version, /api/tags, /api/show")
    response = curl(base_url, "GET", "/api/version")
    check_eq(response.status, 200, f"/api/version ({response!r})")
    check(isinstance(response.json().get("version"), str), f"/api/version body {response.text()!r}")

    response = curl(base_url, "GET", "/api/tags")
    check_eq(response.status, 200, f"/api/tags ({response!r})")
    models = response.json().get("models")
    check(isinstance(models, list) and models, f"/api/tags models {models!r}")
    ours = [m for m in models if str(m.get("name", "")).split(":")[0] == MODEL]
    check(ours, f"/api/tags does not list {MODEL}: {[m.get('name') for m in models]}")
    tag = ours[0]
    for key in ("name", "model", "modified_at", "size", "digest", "details"):
        check(key in tag, f"/api/tags entry lacks {key!r}: {tag}")
    check(isinstance(tag["size"], int) and tag["size"] >= 0, f"/api/tags size {tag['size']!r}")
    details = tag["details"]
    check(isinstance(details, dict), f"/api/tags details {details!r}")
    check_eq(details.get("family"), "llama", "/api/tags details.family")
    check_eq(details.get("quantization_level"), "Q4_1", "/api/tags details.quantization_level")

    response = curl(base_url, "POST", "/api/show", {"model": MODEL})
    check_eq(response.status, 200, f"/api/show ({response!r})")
    show = response.json()
    check(isinstance(show.get("details"), dict), f"/api/show has no details: {show}")
    info = show.get("model_info")
    check(isinstance(info, dict), f"/api/show has no model_info: {list(show)}")
    check_eq(info.get("general.architecture"), "llama", "/api/show model_info general.architecture")
    context = info.get("llama.context_length")
    check(isinstance(context, int) and context >= 2048, f"/api/show llama.context_length {context!r}")
    check(isinstance(show.get("template", ""), str), f"/api/show template {show.get('template')!r}")

    step("unknown models: 404 with an error")
    for method, path, body in (("POST", "/api/show", {"model": "no-such-model"}),
                               ("POST", "/api/chat", {"model": "no-such-model", "messages": MESSAGES, "stream": False}),
                               ("POST", "/api/generate", {"model": "no-such-model", "prompt": "Hi", "stream": False})):
        response = curl(base_url, method, path, body)
        check_eq(response.status, 404, f"{path} for an unknown model ({response!r})")
        check("error" in response.json(), f"{path} for an unknown model: no error in {response.text()!r}")
    response = curl(base_url, "POST", "/api/chat", "{not json")
    check_eq(response.status, 400, f"/api/chat with malformed JSON ({response!r})")


def run(base_url):
    metadata(base_url)
    chat(base_url)
    generate(base_url)
    step("the server is idle afterwards")
    wait_until_idle(base_url, timeout=20)


if __name__ == "__main__":
    main(run)
