"""Client rules: a guid is unique within its project; a client has an email or a phone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.clients import repository
from rassylka.clients.importing import (
    ROW_EMAIL_OPTED_OUT,
    ROW_GUID,
    ROW_OPTED_OUT,
    ROW_SMS_OPTED_OUT,
    ValidRow,
    row_fields,
)
from rassylka.clients.models import Client, Consent
from rassylka.clients.schemas import (
    ClientCreate,
    ClientUpdate,
    consent_stamps,
    contact_problems,
    normalize_phone,
)
from rassylka.db import utcnow
from rassylka.errors import Conflict, NotFound, ValidationFailed
from rassylka.mailings.models import Channel
from rassylka.messages import queue
from rassylka.messages import repository as message_repository
from rassylka.messages.models import MessageStatus
from rassylka.messages.repository import OPTED_OUT, OPTED_OUT_OF
from rassylka.projects import service as project_service
from rassylka.scheduling import phone_zone

IMPORT_CHUNK = 5000
OPTED_OUT_OF_CHANNEL = {Channel.EMAIL: "email_opted_out", Channel.SMS: "sms_opted_out"}
"""A client's opt-out of each channel: setting it skips what is queued for them there;
clearing it sends them that channel's messages again (a suppression of the address stays)."""

# Also the answer to a key of another project (access.scope): the same, to reveal nothing.
NOT_FOUND = "Клиент {} не найден"


async def create(
    clients: repository.NewClients,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    data: ClientCreate,
) -> Mapping[str, Any]:
    """The new client's row, written by one statement that also finds the project.

    Only when nothing was written do queries tell why, in the order the checks always had: an
    unknown project, no contact, a guid taken in the project.
    """
    fields = data.model_dump(exclude={"project"})
    fields["phone_timezone"] = phone_zone(data.phone)
    # A new client's consent is unknown unless given: only another value is a change to stamp.
    changed = {name for name in data.model_fields_set if fields.get(name) != Consent.UNKNOWN}
    consent_stamps(fields, changed, utcnow())
    code, number = project_service.reference_keys(data.project)
    for _ in range(2):  # a taken guid may be freed between the insert and the check
        if not contact_problems(email=data.email, phone=data.phone):
            row = await clients.insert(project_code=code, project_id=number, fields=fields)
            if row is not None:
                return row
        async with sessionmaker() as session:
            project = await project_service.resolve(
                session, reference=data.project, field="project"
            )
            if problems := contact_problems(email=data.email, phone=data.phone):
                raise ValidationFailed(problems)
            await _ensure_guid_free(session, project_id=project.id, guid=data.guid)
    raise Conflict.on("guid", f"Клиент с guid «{data.guid}» уже есть в этом проекте")


async def update(session: AsyncSession, *, client_id: int, data: ClientUpdate) -> Client:
    data.check_path_id(client_id)
    client = await get(session, client_id=client_id)
    changes = data.model_dump(exclude_unset=True, exclude={"primary_key"})
    for required in (
        "guid",
        "first_name",
        "last_name",
        "middle_name",
        "tags",
        "attributes",
        "opted_out",
        *OPTED_OUT_OF_CHANNEL.values(),
        "email_consent",
        "sms_consent",
    ):
        if required in changes and changes[required] is None:
            raise ValidationFailed.on(required, "Поле нельзя очистить")
    for prefix in ("email", "sms"):  # a consent that changes without its moment: now
        consent = f"{prefix}_consent"
        if consent in changes and changes[consent] == getattr(client, consent):
            del changes[consent]
    consent_stamps(changes, set(changes), utcnow())
    if "guid" in changes and changes["guid"] != client.guid:
        await _ensure_guid_free(session, project_id=client.project_id, guid=changes["guid"])
    email = changes.get("email", client.email)
    phone = changes.get("phone", client.phone)
    if problems := contact_problems(email=email, phone=phone):
        raise ValidationFailed(problems)
    for name, value in changes.items():
        setattr(client, name, value)
    if "phone" in changes:
        client.phone_timezone = phone_zone(client.phone)
    await session.flush()
    await _skip_opted_out(
        session,
        project_id=client.project_id,
        client_id=client.id,
        everything=bool(changes.get("opted_out")),
        channels=[channel for channel, field in OPTED_OUT_OF_CHANNEL.items() if changes.get(field)],
    )
    return client


async def get(session: AsyncSession, *, client_id: int) -> Client:
    client = await repository.get(session, client_id)
    if client is None:
        raise NotFound.on("id", NOT_FOUND.format(client_id))
    return client


async def page(
    session: AsyncSession,
    *,
    project: str | int | None,
    guid: str | None,
    limit: int,
    offset: int,
    search: str | None = None,
) -> tuple[Sequence[Client], int]:
    """A page of clients; ``search``: a part of a name, guid, email or phone, or a phone
    number written any way a person writes it (``8 916 123-45-67``)."""
    project_id = None
    if project is not None:
        project_id = (await project_service.resolve(session, reference=project, field="project")).id
    search = (search or "").strip() or None
    return await repository.page(
        session,
        project_id=project_id,
        guid=guid,
        limit=limit,
        offset=offset,
        search=search,
        phone=_as_phone(search),
    )


def _as_phone(search: str | None) -> str | None:
    if search is None or not any(char.isdigit() for char in search):
        return None
    try:
        return normalize_phone(search)
    except ValueError:
        return None


async def delete(session: AsyncSession, *, client_id: int) -> None:
    client = await get(session, client_id=client_id)
    await message_repository.forget_client(session, client_id=client.id)
    await repository.delete(session, client)


async def upsert(
    session: AsyncSession, *, project_id: int, rows: Sequence[ValidRow]
) -> tuple[int, int]:
    """Write validated import rows, a guid seen twice keeping its last; (created, updated).

    A new client gets its row with defaults for what the row leaves out; an existing one
    changes only in the fields its row carries. Counted as if the rows were applied one after
    another: the first sight of a new guid creates, every later row with it updates.
    """
    latest: dict[str, ValidRow] = {}
    occurrences: dict[str, int] = {}
    for row in rows:
        guid = row.values[ROW_GUID]
        latest[guid] = row
        occurrences[guid] = occurrences.get(guid, 0) + 1
    updated = sum(occurrences.values())
    del occurrences
    created = 0
    guids = list(latest)
    postgresql = session.get_bind().dialect.name == "postgresql"
    chunk = max(1, len(guids)) if postgresql else IMPORT_CHUNK  # COPY takes them at once
    for start in range(0, len(guids), chunk):
        # Rows that carry the same fields share one statement: an existing client keeps
        # whatever its row leaves out (a CSV without an email column wipes no emails).
        batches: dict[frozenset[str], list[tuple[Any, ...]]] = defaultdict(list)
        for guid in guids[start : start + chunk]:
            batches[latest[guid].given].append(latest[guid].values)
        # The zone the number names goes with it (a row without a phone has no zone).
        writes = [
            (given | {"phone_timezone"} if "phone" in given else given, batch)
            for given, batch in batches.items()
        ]
        del batches
        if postgresql:
            created += await repository.copy_upsert(session, project_id=project_id, batches=writes)
            continue
        for given, batch in writes:
            created += len(
                await repository.upsert_many(
                    session,
                    project_id=project_id,
                    rows=[row_fields(values) for values in batch],
                    update=given,
                )
            )
    updated -= created
    await _skip_opted_out(
        session,
        project_id=project_id,
        client_id=None,
        everything=any(
            "opted_out" in row.given and row.values[ROW_OPTED_OUT] for row in latest.values()
        ),
        channels=[
            channel
            for channel, field, index in (
                (Channel.EMAIL, "email_opted_out", ROW_EMAIL_OPTED_OUT),
                (Channel.SMS, "sms_opted_out", ROW_SMS_OPTED_OUT),
            )
            if any(field in row.given and row.values[index] for row in latest.values())
        ],
    )
    return created, updated


async def _skip_opted_out(
    session: AsyncSession,
    *,
    project_id: int,
    client_id: int | None,
    everything: bool,
    channels: Sequence[Channel],
) -> None:
    """Skip what is queued for the project's clients (one, or all) now opted out of
    ``everything`` or of ``channels``, each with its reason; the events once, last."""
    now = utcnow()
    skipped: list[int] = []
    if everything:
        skipped += await queue.mark_skipped(
            session,
            project_id=project_id,
            reason=OPTED_OUT,
            now=now,
            opted_out=True,
            client_id=client_id,
        )
    for channel in channels:
        skipped += await queue.mark_skipped(
            session,
            project_id=project_id,
            reason=OPTED_OUT_OF[channel],
            now=now,
            opted_out=True,
            client_id=client_id,
            channel=channel,
        )
    if skipped:
        await queue.log_events(
            session, ids=sorted(skipped), old_status=MessageStatus.QUEUED, now=now
        )


async def _ensure_guid_free(session: AsyncSession, *, project_id: int, guid: str) -> None:
    if await repository.get_by_guid(session, project_id=project_id, guid=guid) is not None:
        raise Conflict.on("guid", f"Клиент с guid «{guid}» уже есть в этом проекте")
