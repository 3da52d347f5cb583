"""``manage.py runall``: the whole system in one terminal (what ``make run`` starts).

Redis (unless one already answers at CELERY_BROKER_URL), the Celery worker with
its periodic tasks, the DICOM SCP and the web server. Ctrl-C stops them all; if
any one of them dies, the others are stopped too, so nothing runs half-up.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse, urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.http.request import validate_host

from network.addresses import local_addresses


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_admin(password_file) -> tuple[str, str | None]:
    """Create the first administrator on a fresh database; returns (username, new password or None)."""
    user_model = get_user_model()
    if user_model.objects.filter(is_superuser=True).exists():
        return "", None
    password = secrets.token_urlsafe(12)
    user_model.objects.create_superuser("admin", "", password)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return "admin", password


ALL_INTERFACES = ("0.0.0.0", "::", "")  # noqa: S104 - the web, like the SCP, serves the department


def web_bind(host: str, port: int) -> str:
    """gunicorn's --bind value (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def web_urls(host: str, port: int, addresses: list[str], hostname: str) -> tuple[str, list[str]]:
    """The address to open on this machine, and those to open from another one (none if bound to one address).

    ``addresses`` are this machine's non-loopback addresses (network.addresses), IPv4
    first; the host name comes last, since not every department's DNS knows it.
    """
    if host in ALL_INTERFACES:
        local = _url("127.0.0.1", port)
        remote = [_url(address, port) for address in addresses]
        if hostname:
            remote.append(_url(hostname, port))
        return local, remote
    ip_local = host in ("127.0.0.1", "::1", "localhost")
    return _url(host, port), [] if ip_local else [_url(host, port)]


class Command(BaseCommand):
    help = "Start Redis, the Celery worker, the DICOM SCP and the web server together; Ctrl-C stops all."

    def add_arguments(self, parser):
        parser.add_argument("--web-port", type=int, default=8000)
        # All interfaces, like the SCP: the department's browsers must reach it.
        parser.add_argument("--web-host", default="0.0.0.0")  # noqa: S104

    def handle(self, *args, web_port, web_host, **options):
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        python = sys.executable
        services: dict[str, list[str]] = {}
        broker = urlparse(settings.CELERY_BROKER_URL)
        if broker.scheme == "redis" and not _answers(broker.hostname or "127.0.0.1", broker.port or 6379):
            if broker.hostname not in ("127.0.0.1", "localhost") or not shutil.which("redis-server"):
                raise CommandError(f"no Redis answers at {settings.CELERY_BROKER_URL} and none can be started here")
            services["redis"] = [
                "redis-server",
                "--port",
                str(broker.port or 6379),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(settings.VAR_DIR),
                "--appendonly",
                "yes",
                "--save",
                "",
            ]
        services["worker"] = [
            python,
            "-m",
            "celery",
            "-A",
            "imaging",
            "worker",
            "-B",
            "-l",
            "info",
            "-s",
            str(settings.VAR_DIR / "celerybeat-schedule"),
        ]
        services["scp"] = [python, "manage.py", "runscp"]
        services["web"] = [
            python,
            "-m",
            "gunicorn",
            "imaging.wsgi:application",
            "--config",
            "python:imaging.gunicorn_conf",
            "--bind",
            web_bind(web_host, web_port),
            "--workers",
            "3",
            "--access-logfile",
            "-",
        ]

        running: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(signum=None, frame=None):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, command in services.items():
                # Own process group: Ctrl-C reaches only us, and we stop them in order.
                running[name] = subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True)
                if name == "redis":
                    deadline = time.monotonic() + 15
                    while not _answers("127.0.0.1", broker.port or 6379):
                        if time.monotonic() > deadline:
                            raise CommandError("redis-server did not start")
                        time.sleep(0.1)
            user, password = ensure_admin(settings.VAR_DIR / "admin-password.txt")
            self.stdout.write(self.style.SUCCESS(self._banner(web_host, web_port, user, password)))
            while not stopping:
                for name, proc in running.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with status {proc.returncode}; stopping everything")
                        stopping = True
                time.sleep(0.5)
        finally:
            # The SCP first (it may still be finishing stores), Redis last.
            for name in ("scp", "web", "worker", "redis"):
                proc = running.get(name)
                if proc and proc.poll() is None:
                    proc.terminate()
            for name in ("scp", "web", "worker", "redis"):
                proc = running.get(name)
                if proc:
                    try:
                        proc.wait(settings.DICOM_SHUTDOWN_GRACE + 10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            self.stdout.write("stopped")

    def _banner(self, host, port, user, password, addresses=None, hostname=None) -> str:
        """What `make run` prints; ``addresses`` and ``hostname`` default to this machine's (tests pass theirs)."""
        if addresses is None:
            addresses = [a.address for a in local_addresses()]
        if hostname is None:
            hostname = socket.gethostname()
        local, remote = web_urls(host, port, addresses, hostname)
        lines = ["", f"  Web:        {local}  (administration at {local}admin/)"]
        # Only the addresses Django will answer to (an ALLOWED_HOSTS set by hand may leave some out).
        answered = [url for url in remote if validate_host(urlsplit(url).hostname or "", settings.ALLOWED_HOSTS)]
        if answered:
            lines.append(f"  From another machine: {'  or  '.join(answered)}")
        elif remote:
            lines.append("              (ALLOWED_HOSTS lists none of this machine's addresses: add the one to open)")
        elif host not in ALL_INTERFACES:
            lines.append(f"              (listening on {host} only: start with --web-host 0.0.0.0 for other machines)")
        if password:
            lines.append(
                f"  Log in as:  {user} / {password}  (also saved in {settings.VAR_DIR / 'admin-password.txt'})"
            )
        else:
            lines.append(
                "  Log in with your administrator account "
                f"(first password in {settings.VAR_DIR / 'admin-password.txt'})."
            )
        aet, port = settings.DICOM_AE_TITLE, settings.DICOM_PORT
        # The command a newcomer can paste: the virtualenv's python when we run from one here.
        python = os.path.relpath(sys.executable, settings.BASE_DIR)
        if python.startswith(".."):
            python = "python"
        lines += [
            f"  DICOM SCP:  AE title {aet}, port {port}",
            "  Modalities: only registered nodes may connect. Add one in the admin (Modality nodes)",
            f"              or with: {python} manage.py modality add AE_TITLE HOST PORT",
            f"  Try it:     {python} manage.py modality add STORESCU 127.0.0.1 0",
            f"              echoscu -aet STORESCU -aec {aet} 127.0.0.1 {port}",
            f"              TCP_NODELAY=1 storescu -aet STORESCU -aec {aet} 127.0.0.1 {port} FILE.dcm",
            "  Ctrl-C stops everything.",
            "",
        ]
        return "\n".join(lines)
