"""The OpenAI-compatible refiner: chat completions over HTTP (vLLM, Ollama, llama.cpp, hosted APIs).

Standard library only: ``urllib.request`` for the requests, a thread pool for the concurrency limit.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from usvl.text.refiners.base import Failure

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying (rate limits, overload, server errors)."""


class OpenAIRefiner:
    """Refine through an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: Server root including the API prefix, e.g. ``http://127.0.0.1:8000/v1``.
        model: Model name the server knows.
        api_key_env: Name of the environment variable holding the API key (never the key itself); ``None`` for
            servers without authentication.
        timeout: Seconds to wait for one response.
        max_retries: Retries after a 408/409/429/5xx answer, a connection error or a timeout.
        backoff: Seconds before the first retry; doubled after each.
        concurrency: Requests in flight at once.
        max_tokens: Generation length limit.
        temperature: Sampling temperature (0: greedy on most servers).
        seed: Sampling seed sent to the server (servers may ignore it).

    Raises:
        KeyError: ``api_key_env`` is given but that variable is not set.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, backoff: float = 1.0, concurrency: int = 4, max_tokens: int = 256,
                 temperature: float = 0.0, seed: int | None = 0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_name, self.api_key_env = model, api_key_env
        if api_key_env and not os.environ.get(api_key_env):
            raise KeyError(f"Environment variable {api_key_env} (named by api_key_env) is not set; export the "
                           f"server's API key in it, or leave api_key_env out for a server without a key")
        self.timeout, self.max_retries, self.backoff, self.concurrency = timeout, max_retries, backoff, concurrency
        self.settings: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed,
                                         "timeout": timeout, "max_retries": max_retries, "concurrency": concurrency}
        self.served: set[str] = set()

    @property
    def model(self) -> dict[str, Any]:
        """The requested model, the server and the model name(s) the server answered with."""
        return {"id": self.model_name, "base_url": self.url.rsplit("/chat/completions", 1)[0],
                "served": sorted(self.served)}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        return headers

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=self._headers(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read().decode("utf-8"))

    def complete(self, source: str, instruction: str) -> str | Failure:
        """One chat completion with retries and exponential backoff; a :class:`Failure` when every try failed."""
        body = {"model": self.model_name, "messages": [{"role": "system", "content": instruction},
                                                       {"role": "user", "content": source}],
                "max_tokens": self.settings["max_tokens"], "temperature": self.settings["temperature"]}
        if self.settings["seed"] is not None:
            body["seed"] = self.settings["seed"]
        error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                answer = self._post(body)
            except urllib.error.HTTPError as failure:
                error = f"HTTP {failure.code} from {self.url}"
                if failure.code not in RETRY_STATUS:
                    return Failure(f"{error} (not retried): {failure.read()[:200]!r}")
            except (urllib.error.URLError, TimeoutError, ConnectionError) as failure:
                error = f"{type(failure).__name__} from {self.url}: {getattr(failure, 'reason', failure)}"
            else:
                try:
                    text = answer["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    return Failure(f"{self.url} answered without choices[0].message.content: {str(answer)[:200]}")
                self.served.add(str(answer.get("model", self.model_name)))
                return str(text).strip()
            log.warning("Refiner request failed (try %d of %d): %s", attempt + 1, self.max_retries + 1, error)
        return Failure(f"{error}; gave up after {self.max_retries + 1} tries")

    def generate(self, sources: list[str], instruction: str) -> list[str | Failure]:
        """Refine every source with at most ``concurrency`` requests in flight; results keep the input order."""
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(lambda source: self.complete(source, instruction), sources))
