"""The API as the console commands see it: one HTTP client, the manual's envelope unwrapped,
and every failure turned into one Russian line with the exit code it earns.

Exit codes (docs/cli.md):
    0  done
    1  it ran, but something failed (rejected rows, a failed send)
    2  bad usage or input the API refused (a 4xx envelope)
    3  the API or the peer could not be reached, or answered 5xx
"""

from __future__ import annotations

from typing import Any

import httpx

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_UNREACHABLE = 3
DEFAULT_URL = "http://127.0.0.1:8000"


class CliFailure(Exception):
    """What to print (one line) and how to exit; the commands raise it, ``commands`` prints it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def unreachable(url: str, error: BaseException) -> CliFailure:
    reason = str(error) or type(error).__name__
    return CliFailure(f"Не удалось подключиться к {url}: {reason}", EXIT_UNREACHABLE)


def refusal(response: httpx.Response) -> CliFailure:
    """The error envelope (``{"code": .., "error": {"message", "details"}}``) as one line;
    a body that is not one (a proxy's page) is named by its status."""
    code = EXIT_REFUSED if response.status_code < 500 else EXIT_UNREACHABLE
    try:
        body = response.json()
        error = body["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return CliFailure(f"Сервер ответил {response.status_code} {response.reason_phrase}", code)
    details = error.get("details") or []
    if details:
        message += ": " + "; ".join(
            f"{detail.get('field')} — {detail.get('message')}" for detail in details
        )
    return CliFailure(message, code)


class Api:
    """An ``httpx.AsyncClient`` on the service's URL with the API key as a Bearer token."""

    def __init__(self, url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **options: Any) -> Any:
        """The ``data`` of the answer's envelope; ``CliFailure`` for anything else."""
        try:
            response = await self.http.request(method, path, **options)
        except httpx.TransportError as error:
            raise unreachable(self.url, error) from None
        return data_of(response)

    async def get(self, path: str, **options: Any) -> Any:
        return await self.call("GET", path, **options)

    async def post(self, path: str, **options: Any) -> Any:
        return await self.call("POST", path, **options)


def data_of(response: httpx.Response) -> Any:
    if response.is_success:
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError):
            pass
        raise CliFailure(
            f"Неожиданный ответ {response.status_code}: это точно адрес Rassylka?",
            EXIT_UNREACHABLE,
        )
    raise refusal(response)
