"""A rotated key counts against the budget of the first key of its line (`APIKey.budget_lineage`).
Keys rotated before this migration get their line from `replaced_by`, oldest first."""

from django.db import migrations, models


def lineages_from_rotations(apps, schema_editor):
    APIKey = apps.get_model("accounts", "APIKey")
    lineage: dict[int, int] = {}
    for key in APIKey.objects.filter(replaced_by__isnull=False).order_by("created_at", "pk").iterator():
        root = lineage.get(key.pk, key.pk)
        lineage[key.replaced_by_id] = root
    for key_id, root in lineage.items():
        APIKey.objects.filter(pk=key_id).update(budget_lineage=root)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_models_allowed"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="budget_lineage",
            field=models.PositiveBigIntegerField(
                blank=True,
                editable=False,
                help_text="The first key of the rotations this one descends from: they share one token budget.",
                null=True,
            ),
        ),
        migrations.RunPython(lineages_from_rotations, migrations.RunPython.noop),
    ]
