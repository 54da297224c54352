"""Endpoints' signing secrets sealed at rest (`common.sealed`): the column is renamed and each
secret written before is sealed under the current DJANGO_SECRET_KEY."""

from django.db import migrations, models


def seal_existing(apps, schema_editor):
    from common.sealed import PREFIX, seal

    WebhookEndpoint = apps.get_model("webhooks", "WebhookEndpoint")
    for endpoint in WebhookEndpoint.objects.exclude(secret_sealed__startswith=PREFIX).iterator():
        endpoint.secret_sealed = seal(endpoint.secret_sealed)
        endpoint.save(update_fields=["secret_sealed"])


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.RenameField(model_name="webhookendpoint", old_name="secret", new_name="secret_sealed"),
        migrations.AlterField(
            model_name="webhookendpoint",
            name="secret_sealed",
            field=models.CharField(editable=False, max_length=300),
        ),
        migrations.RunPython(seal_existing, migrations.RunPython.noop),
    ]
