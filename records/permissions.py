"""Granting model permissions to a role's group from a data migration."""


def grant(apps, schema_editor, group_name: str, spec: dict[str, dict[str, tuple[str, ...]]]) -> None:
    """Give ``group_name`` the permissions in ``spec`` ({app: {model: (action, ...)}}), creating both if needed.

    Permissions are normally created after all migrations (post_migrate); they are
    created here so that a fresh database gets its groups right.
    """
    from django.contrib.auth.management import create_permissions

    for label in spec:
        app_config = apps.get_app_config(label)
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=schema_editor.connection.alias, apps=apps)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=group_name)
    for app_label, models in spec.items():
        for model, actions in models.items():
            codenames = [f"{action}_{model}" for action in actions]
            permissions = Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
            if permissions.count() != len(codenames):
                raise RuntimeError(f"missing permissions for {app_label}.{model}: {codenames}")
            # add, not set: keeps what an administrator later gave the group.
            group.permissions.add(*permissions)
