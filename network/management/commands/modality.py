"""``manage.py modality add|list|remove``: modality nodes from scripts and first-time setup."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from network.models import ModalityNode, normalize_ae_title


class Command(BaseCommand):
    help = "Add, list or remove the DICOM nodes allowed to talk to us."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="add a node, or update the one with this AE title")
        add.add_argument("ae_title")
        add.add_argument("host", help="IP address or host name")
        add.add_argument("port", type=int, help="where the node listens (0 if it never does)")
        add.add_argument("--no-store", action="store_true", help="may not send images to us")
        add.add_argument("--no-query", action="store_true", help="may not query us (C-FIND)")
        add.add_argument("--no-retrieve", action="store_true", help="may not retrieve from us (C-MOVE/C-GET)")
        add.add_argument("--description", default="")
        add.add_argument("--location", default="")
        add.add_argument("--charset", default="", help="fallback character set, e.g. GB18030")
        sub.add_parser("list", help="list the nodes")
        remove = sub.add_parser("remove", help="remove a node")
        remove.add_argument("ae_title")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _add(self, *, ae_title, host, port, no_store, no_query, no_retrieve, description, location, charset, **_):
        title = normalize_ae_title(ae_title)
        node = ModalityNode.objects.filter(ae_title=title).first() or ModalityNode(ae_title=title)
        created = node.pk is None
        node.host, node.port, node.active = host, port, True
        node.may_store, node.may_query, node.may_retrieve = not no_store, not no_query, not no_retrieve
        node.description, node.location, node.fallback_charset = description, location, charset
        try:
            node.full_clean(exclude=["port"] if port == 0 else None)
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        node.save()
        self.stdout.write(f"{'added' if created else 'updated'} {node}: {self._rights(node)}")

    def _list(self, **_):
        nodes = ModalityNode.objects.all()
        if not nodes:
            self.stdout.write("no nodes: add one with `manage.py modality add AE HOST PORT`")
        for node in nodes:
            state = "" if node.active else " (inactive)"
            self.stdout.write(f"{node.ae_title:16} {node.host}:{node.port}  {self._rights(node)}{state}")

    def _remove(self, *, ae_title, **_):
        deleted, _ = ModalityNode.objects.filter(ae_title=normalize_ae_title(ae_title)).delete()
        if not deleted:
            raise CommandError(f"no node with AE title {ae_title!r}")
        self.stdout.write(f"removed {ae_title}")

    @staticmethod
    def _rights(node) -> str:
        rights = [
            name
            for name, ok in (("store", node.may_store), ("query", node.may_query), ("retrieve", node.may_retrieve))
            if ok
        ]
        return "may " + ", ".join(rights) if rights else "may do nothing"
