"""`hearth serve --api-key KEY`: API routes (OpenAI and Ollama) answer 401 with an OpenAI-style
error without `Authorization: Bearer KEY` or with a wrong key, and work with it (the official
client included); /health stays open for probes.

usage: auth.py BASE_URL KEY
"""

from common import MODEL, check, check_eq, check_openai_error, curl, main, openai_client, step


def run(base_url, key):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    routes = (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat),
              ("POST", "/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2}))

    step("no key, a wrong key, a non-Bearer scheme: 401")
    for method, path, body in routes:
        for headers, what in (({}, "no Authorization header"),
                              ({"Authorization": f"Bearer {key}x"}, "a wrong key"),
                              ({"Authorization": f"Basic {key}"}, "a non-Bearer scheme")):
            check_openai_error(curl(base_url, method, path, body, headers), 401, f"{method} {path} with {what}")
    for method, path in (("GET", "/api/tags"), ("POST", "/api/chat")):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False} if method == "POST" else None
        status = curl(base_url, method, path, body).status
        check_eq(status, 401, f"{method} {path} without a key")

    step("the right key: 200")
    for method, path, body in routes:
        response = curl(base_url, method, path, body, {"Authorization": f"Bearer {key}"})
        check_eq(response.status, 200, f"{method} {path} with the key ({response!r})")
    response = curl(base_url, "GET", "/api/tags", headers={"Authorization": f"Bearer {key}"})
    check_eq(response.status, 200, f"GET /api/tags with the key ({response!r})")

    step("the official client with the key works; with a wrong key it raises AuthenticationError")
    reply = openai_client(base_url, api_key=key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)
    check(reply.choices, "no choices")
    import openai

    try:
        openai_client(base_url, api_key="wrong").models.list()
        check(False, "a wrong key was accepted by /v1/models")
    except openai.AuthenticationError:
        pass

    step("/health needs no key")
    check_eq(curl(base_url, "GET", "/health").status, 200, "GET /health without a key")


if __name__ == "__main__":
    main(run)
