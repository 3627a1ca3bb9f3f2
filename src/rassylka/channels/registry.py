"""All wiring of transports happens here: which one carries each channel, from the settings.

email: SMTP when RASSYLKA_SMTP_HOST is set, else the outbox
SMS:   SMPP when RASSYLKA_SMPP_HOST is set, else the HTTP provider when
       RASSYLKA_SMS_HTTP_URL is set, else the outbox
"""

from __future__ import annotations

from rassylka.channels.base import Channel, ChannelKind
from rassylka.channels.http_sms import HttpSmsChannel, HttpSmsConfig
from rassylka.channels.outbox import OutboxChannel
from rassylka.channels.smpp import InboundHandler, ReceiptHandler, SmppChannel, SmppConfig
from rassylka.channels.smtp import SmtpChannel, SmtpConfig
from rassylka.config import Settings
from rassylka.mailings.models import Channel as MailingChannel


def open_channels(
    settings: Settings,
    *,
    on_receipt: ReceiptHandler | None = None,
    on_inbound: InboundHandler | None = None,
) -> dict[int, Channel]:
    """The transport of each mailing channel (1 email, 2 SMS); none connects before use.
    ``on_receipt`` gets the SMSC's delivery receipts, ``on_inbound`` the texts handsets send."""
    email: Channel = (
        SmtpChannel(SmtpConfig.from_settings(settings))
        if settings.smtp_host
        else OutboxChannel.from_settings(settings, ChannelKind.EMAIL)
    )
    sms: Channel
    if settings.smpp_host:
        sms = SmppChannel(
            SmppConfig.from_settings(settings), on_receipt=on_receipt, on_inbound=on_inbound
        )
    elif settings.sms_http_url:
        sms = HttpSmsChannel(HttpSmsConfig.from_settings(settings))
    else:
        sms = OutboxChannel.from_settings(settings, ChannelKind.SMS)
    return {MailingChannel.EMAIL: email, MailingChannel.SMS: sms}


def describe(channels: dict[int, Channel]) -> str:
    """One line for the log: which transport carries each channel."""
    return ", ".join(
        f"{MailingChannel(channel).name.lower()} → {type(transport).__name__}"
        for channel, transport in channels.items()
    )
