"""Transport for the Label Studio adapter: the SDK client, the retry policy, error
translation and the Data Manager task queries (keyset-paginated).

Only ``connector.labelstudio*`` modules import ``label_studio_sdk``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx

# The generated client without the SDK's extensions: those pull in pandas and jsf (about
# 1.2 s of CPU per start, measured; a restarted daemon pays it each time) for exports and
# label-interface helpers the connector does not use. Pagers and project reads are alike.
from label_studio_sdk.base_client import LabelStudioBase as LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.core.request_options import RequestOptions

from connector import retry as policy
from connector.contracts.errors import AuthError, ConfigError, ConnectorError, ServiceUnavailable
from connector.labelstudio.query import (
    ITEM_KEY,
    dm_datetime,
    dm_filter,
    dm_query,
    id_chunks,
    parse_ls_datetime,
)
from connector.retry import TRANSIENT_HTTP_STATUS

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Fields a poll needs: the task's own and its annotations' (``include`` applies to the
#: nested annotations too, so their fields are named here as well).
POLL_FIELDS = "id,data,updated_at,annotations,result,was_cancelled,ground_truth,completed_by"
LOOKUP_FIELDS = "id,data"
LOOKUP_PAGE = 1000


def token_kind(token: str) -> str:
    """``"personal access token"`` for a JWT (refresh token), else ``"legacy token"``."""
    is_jwt = token.count(".") == 2 and token.startswith("eyJ")
    return "personal access token" if is_jwt else "legacy token"


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):  # connection refused/reset, timeouts
        return True
    return isinstance(exc, ApiError) and exc.status_code in TRANSIENT_HTTP_STATUS


def api_detail(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(str(body["validation_errors"]))
        return "; ".join(p for p in parts if p) or str(body)[:300]
    return str(body)[:300]


def _about_auth(exc: ApiError) -> bool:
    """A 403 about credentials/permissions (not e.g. a blocked storage URL)."""
    words = ("permission", "credential", "token", "authenticat", "not allowed")
    return any(w in api_detail(exc).lower() for w in words)


class LabelStudioClient:
    """One project's API, with the shared retry policy and errors that name the fix."""

    def __init__(
        self,
        url: str,
        token: str,
        project_id: int,
        *,
        timeout_s: float = 30.0,
        retry_attempts: int = 5,
        retry_max_wait_s: float = 20.0,
        ca_bundle: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.ca_bundle = ca_bundle
        self.project_id = int(project_id)
        self.timeout_s = timeout_s
        self.retry_attempts = retry_attempts
        self.retry_max_wait_s = retry_max_wait_s
        self._token = token
        self._sdk: LabelStudio | None = None
        self._outages = policy.Outages()

    def __repr__(self) -> str:  # never the token
        return f"LabelStudioClient(url={self.url!r}, project_id={self.project_id})"

    @property
    def token_kind(self) -> str:
        return token_kind(self._token)

    @property
    def sdk(self) -> LabelStudio:
        if self._sdk is None:
            try:
                # SDK retries off everywhere: the shared policy retries, once.
                self._sdk = LabelStudio(
                    base_url=self.url,
                    api_key=self._token,
                    timeout=self.timeout_s,
                    max_retries=0,
                    # TLS is always verified; a private CA's bundle replaces the system's.
                    httpx_client=httpx.Client(timeout=self.timeout_s, verify=self._tls()),
                )
            except ApiError as exc:  # an expired or malformed JWT is refused here
                raise self.auth_error(exc) from None
        return self._sdk

    def _tls(self) -> ssl.SSLContext | bool:
        """TLS verification: the system's CAs, or only the configured bundle's."""
        if not self.ca_bundle:
            return True
        try:
            return ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"label_studio.ca_bundle {self.ca_bundle!r} is not a readable PEM bundle "
                f"({exc}); point it at the CA file that signs Label Studio's certificate"
            ) from None

    # ------------------------------------------------------------------ errors, retry
    def auth_error(self, exc: ApiError) -> AuthError:
        return AuthError(
            f"Label Studio at {self.url} rejected the {self.token_kind} (HTTP "
            f"{exc.status_code}: {api_detail(exc)}); set ALC_LABEL_STUDIO__TOKEN or "
            "label_studio.token_file to a valid legacy token or personal access token "
            f"(Account & Settings) of a user with access to project {self.project_id}"
        )

    def project_not_found(self) -> str:
        return (
            f"Label Studio project {self.project_id} does not exist at {self.url} (or this "
            "token's user cannot see it); fix label_studio.project_id or unset it to create one"
        )

    def translate(self, exc: Exception, what: str, not_found: str | None = None) -> BaseException:
        """The connector error for an SDK/HTTP exception; any other comes back unchanged."""
        if isinstance(exc, ApiError) and is_transient(exc):
            # The server answered, with an error: its detail, never str(ApiError) (which
            # dumps the raw response headers).
            return ServiceUnavailable(
                f"Label Studio at {self.url} answered HTTP {exc.status_code} to '{what}' "
                f"{self.retry_attempts} times ({api_detail(exc)}); look in the Label Studio "
                "server's log for the cause, then retry"
            )
        if is_transient(exc):
            cause = f"{type(exc).__name__}: {exc}"[:300]
            return ServiceUnavailable(
                f"Label Studio at {self.url} did not answer ({what}) after "
                f"{self.retry_attempts} attempts ({cause}); check label_studio.url and that "
                "the server is up"
            )
        if isinstance(exc, ApiError):
            if exc.status_code == 401 or (exc.status_code == 403 and _about_auth(exc)):
                return self.auth_error(exc)
            if exc.status_code == 404 and not_found:
                return ConfigError(not_found)
            return ConnectorError(
                f"Label Studio refused to {what} (HTTP {exc.status_code}: {api_detail(exc)})"
            )
        return exc

    def call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        not_found: str | None = None,
        retry: bool = True,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)`` under the shared retry policy, errors translated.

        ``what`` completes "Label Studio refused to ..." in errors and names the call in
        retry log lines. ``not_found`` is the message of a 404. ``retry=False`` lets raw
        exceptions through, for callers that retry themselves.
        """
        if not retry:
            return fn(*args, **kwargs)
        return policy.call(
            lambda: fn(*args, **kwargs),
            what=f"Label Studio: {what}",
            is_transient=is_transient,
            translate=lambda exc: self.translate(exc, what, not_found),
            attempts=self.retry_attempts,
            max_wait_s=self.retry_max_wait_s,
            outages=self._outages,
        )

    # ------------------------------------------------------------------ projects
    def project(self) -> Any:
        return self.call(
            "read the project",
            self.sdk.projects.get,
            id=self.project_id,
            not_found=self.project_not_found(),
        )

    # ------------------------------------------------------------------ tasks
    def page(
        self,
        filters: Sequence[dict[str, Any]],
        ordering: str | None,
        size: int,
        fields: str,
        *,
        retry: bool = True,
    ) -> Any:
        """Page 1 of the filtered task list (the SDK pager: ``.items``, ``.response.total``)."""
        return self.call(
            "list tasks",
            self.sdk.tasks.list,
            project=self.project_id,
            fields="all" if "annotations" in fields else "task_only",
            include=fields,
            query=dm_query(filters, ordering),
            page=1,
            page_size=size,
            resolve_uri=False,
            not_found=self.project_not_found(),
            retry=retry,
        )

    def tasks_where(
        self, filters: Sequence[dict[str, Any]], *, size: int, fields: str, retry: bool = True
    ) -> Iterator[Any]:
        """Every task matching ``filters``, keyset-paginated by id (stable under writes)."""
        last_id = 0
        while True:
            keyset = dm_filter("id", "greater", "Number", last_id)
            items = list(self.page([*filters, keyset], "id", size, fields, retry=retry).items or [])
            yield from items
            if len(items) < size:
                return
            last_id = int(items[-1].id)

    def changed_tasks(self, cursor: str | None, page_size: int) -> Iterator[Any]:
        """Tasks with ``updated_at > cursor`` (all if None), oldest change first, with
        their annotations.

        Keyset pagination on ``updated_at``: a task updated while we page moves behind the
        cursor and is read again later instead of shifting a page under us. A page that
        ends in a run of equal timestamps is completed by reading that timestamp alone.
        """
        while True:
            filters = [dm_filter("updated_at", "greater", "Datetime", cursor)] if cursor else []
            items = list(self.page(filters, "updated_at", page_size, POLL_FIELDS).items or [])
            yield from items
            if len(items) < page_size:
                return
            last = parse_ls_datetime(items[-1].updated_at)
            if last is None:  # never with Label Studio; but never loop forever either
                raise ConnectorError("Label Studio returned a task without updated_at")
            cursor = dm_datetime(last)
            tie = [dm_filter("updated_at", "equal", "Datetime", cursor)]
            yield from self.tasks_where(tie, size=page_size, fields=POLL_FIELDS)

    def lookup(self, item_ids: Sequence[str], *, retry: bool = True) -> dict[str, list[int]]:
        """``item_id -> [task ids]`` of these items (more than one id: a duplicate)."""
        found: dict[str, list[int]] = {}
        for chunk in id_chunks(list(dict.fromkeys(item_ids))):
            flt = [dm_filter(f"data.{ITEM_KEY}", "in_list", "String", chunk)]
            for task in self.tasks_where(flt, size=LOOKUP_PAGE, fields=LOOKUP_FIELDS, retry=retry):
                item = (task.data or {}).get(ITEM_KEY)
                if item is not None:
                    found.setdefault(str(item), []).append(int(task.id))
        return found

    def import_tasks(
        self, payload: list[dict[str, Any]], timeout_s: float
    ) -> tuple[list[int], int | None]:
        """One import call, SDK retries off (a retried POST could import twice); raw errors.

        Returns the new task ids in payload order ([] if the server does not say) and the
        number of predictions the server created (None if it does not say).
        """
        options = cast(RequestOptions, {"max_retries": 0, "timeout_in_seconds": int(timeout_s)})
        response = self.sdk.projects.import_tasks(
            id=self.project_id,
            request=cast(Any, payload),
            return_task_ids=True,
            request_options=options,
        )
        ids = [int(t) for t in (getattr(response, "task_ids", None) or [])]
        count = getattr(response, "prediction_count", None)
        return ids, None if count is None else int(count)

    def add_missing_predictions(self, payload_by_task: Mapping[int, Mapping[str, Any]]) -> int:
        """Give every task of ``payload_by_task`` that has no prediction the one of its
        import payload; returns how many were added.

        Label Studio 1.23 retries an import that met SQLite's "database is locked"
        (``retry_database_locked`` on ``BaseTaskSerializerBulk.create``) with task dicts
        the first attempt already stripped of their predictions: the whole chunk lands
        without them, and the response's ``prediction_count`` says so. Seen with small
        chunks while annotators save (75 of 770 tasks at ``import_chunk_size = 5``).
        """
        if not payload_by_task:
            return 0
        ids = sorted(payload_by_task)
        bare_filter = [
            dm_filter("id", "greater", "Number", ids[0] - 1),
            dm_filter("id", "less", "Number", ids[-1] + 1),
            dm_filter("total_predictions", "equal", "Number", 0),
        ]
        bare = {int(t.id) for t in self.tasks_where(bare_filter, size=LOOKUP_PAGE, fields="id")}
        added = 0
        for task_id in ids:
            if task_id not in bare:
                continue
            for pred in payload_by_task[task_id].get("predictions") or []:
                extra = {"score": pred["score"]} if "score" in pred else {}
                self.call(
                    "add a missing prediction",
                    self.sdk.predictions.create,
                    task=task_id,
                    result=pred["result"],
                    model_version=pred["model_version"],
                    **extra,
                )
                added += 1
        if added:
            log.warning("project %d: %d predictions the import lost, added", self.project_id, added)
        return added


def create_personal_access_token(url: str, legacy_token: str) -> str:
    """Make a personal access token (a JWT refresh token) for the legacy token's user.

    Turns personal access tokens on for the organization first if they are off (the
    ``jwt_settings`` API). Label Studio lets a user hold one PAT at a time; a second
    request is refused (HTTP 409) and raises ``ConnectorError``.
    """
    client = LabelStudio(base_url=url.rstrip("/"), api_key=legacy_token, max_retries=0)
    jwt = client.jwt_settings.get()
    if not jwt.api_tokens_enabled:
        client.jwt_settings.update(
            api_token_ttl_days=int(jwt.api_token_ttl_days or 365),
            api_tokens_enabled=True,
            legacy_api_tokens_enabled=bool(jwt.legacy_api_tokens_enabled),
        )
    try:
        return str(client.tokens.create().token)
    except ApiError as exc:
        if exc.status_code == 409:
            raise ConnectorError(
                "this user already holds a personal access token; reuse it, or revoke it "
                "in Label Studio (Account & Settings) before making another"
            ) from None
        raise
