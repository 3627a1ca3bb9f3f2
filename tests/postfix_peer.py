"""A private Postfix instance on 127.0.0.1 (its own configuration, queue and port) that relays
mail for chosen domains to chosen SMTP servers and writes real RFC 3464 bounces.

Needs root (Postfix's master starts as root and drops to the ``postfix`` user) and Debian's
postfix package with no mail system configured (tests/peers/install.sh). Nothing outside the
instance's directory is touched; ``postfix -c DIR`` names it in every command.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       1       1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
myhostname = mx.rassylka.test
mydomain = rassylka.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = {domains}
transport_maps = inline:{{ {transports} }}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""


def available() -> str | None:
    """Why a private Postfix cannot run here, or None if it can."""
    if not Path(POSTFIX).exists():
        return "postfix is not installed"
    if os.geteuid() != 0:
        return "a private Postfix needs root"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "there is no postfix user"
    return None


@dataclass
class PostfixPeer:
    root: Path
    """A new folder; it and its parents must be open to the postfix user."""
    routes: dict[str, int]
    """domain → the port on 127.0.0.1 its mail is relayed to."""
    port: int = 0
    log: Path = field(init=False)

    def start(self) -> PostfixPeer:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        etc = self.root / "etc"
        etc.mkdir(parents=True)
        self.root.chmod(0o755)  # the postfix user works below it
        (self.root / "queue").mkdir()
        (self.root / "data").mkdir()
        self.log = self.root / "postfix.log"
        transports = ", ".join(
            f"{domain}=smtp:[127.0.0.1]:{port}" for domain, port in self.routes.items()
        )
        (etc / "main.cf").write_text(
            MAIN_CF.format(root=self.root, domains=", ".join(self.routes), transports=transports)
        )
        (etc / "master.cf").write_text(MASTER_CF.format(port=self.port))
        shutil.chown(self.root / "data", "postfix")
        self._postfix("start")
        deadline = time.monotonic() + 30
        while not self._listening():
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not start: {self._log_text()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.root / "etc"), "stop"], capture_output=True, check=False
        )

    def _postfix(self, command: str) -> None:
        result = subprocess.run(
            [POSTFIX, "-c", str(self.root / "etc"), command], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"postfix {command}: {result.stderr} {self._log_text()}")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
