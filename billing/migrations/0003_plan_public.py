from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0002_knowledge_limits'),
    ]

    operations = [
        migrations.AddField(
            model_name='plan',
            name='public',
            field=models.BooleanField(default=True, help_text='Tenants may choose it themselves (the plans API); otherwise only an operator assigns it.'),
        ),
    ]
