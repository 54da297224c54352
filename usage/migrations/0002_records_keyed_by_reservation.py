import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("usage", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="reservation_id",
            field=models.CharField(max_length=128, null=True),
        ),
        # Existing records were keyed by their (then unique) request id.
        migrations.RunSQL(
            "UPDATE usage_usagerecord SET reservation_id = request_id", reverse_sql=migrations.RunSQL.noop
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="reservation_id",
            field=models.CharField(max_length=128, unique=True),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="request_id",
            field=models.CharField(db_index=True, max_length=128),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="revision",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="organization",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="accounts.organization",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="api_key",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="accounts.apikey",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="status",
            field=models.CharField(
                choices=[
                    ("ok", "Completed"),
                    ("cancelled", "Cancelled by the client"),
                    ("error", "Failed"),
                    ("expired", "Abandoned (charged what it reserved)"),
                ],
                default="ok",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="usagedaily",
            name="organization",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="accounts.organization",
            ),
        ),
        migrations.AlterField(
            model_name="budgetevent",
            name="organization",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="accounts.organization",
            ),
        ),
        migrations.CreateModel(
            name="UsageDeadLetter",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "stream",
                    models.CharField(
                        choices=[("records", "Usage records"), ("events", "Budget events")], max_length=16
                    ),
                ),
                ("entry_id", models.CharField(max_length=64)),
                ("payload", models.TextField()),
                ("error", models.TextField()),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ("-created_at",)},
        ),
    ]
